"""Writing rose runs into MLflow: tracking URI, experiment, one MLflow run per rose run.

Shared by :class:`~rose.integrations.mlflow_tracker.MLflowTracker` (one event
per call) and the MLflow sink (many).  Everything goes through an explicit
:class:`mlflow.MlflowClient`, never the fluent API, so a user's own active
MLflow run is left alone.

An MLflow run is found again by its ``rose.run_id`` tag, and it records how
far it holds its rose run in the ``rose.next_seq`` tag, written in the same
``log_batch`` as the data (see :mod:`rose.integrations.mlflow_mapping`): a
restarted sink, a replay, or a tracker and a sink on the same run never log a
metric step twice.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from rose.integrations.mlflow_mapping import (
    POSITION_TAG,
    RUN_ID_TAG,
    Call,
    Position,
    creation_tags,
    ms,
    plan,
    run_name_for,
)

log = logging.getLogger(__name__)

#: Where runs go when neither an argument nor MLFLOW_TRACKING_URI says otherwise.
#: MLflow 3 refuses the old ./mlruns file store by default; SQLite needs no server.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: Distinct skipped state keys reported per run; beyond that they are dropped silently.
MAX_SKIPPED_REPORTED = 1000


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The argument, then ``MLFLOW_TRACKING_URI``, then :data:`DEFAULT_TRACKING_URI`.

    A relative SQLite path is made absolute now: the database stays where it
    was asked for even if the process changes directory later (MLflow also
    caches stores by URI string, so a relative URI could point at an old place).
    """
    uri = uri or os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = uri[len(prefix) :]
        if path and path != ":memory:" and not path.startswith("/") and "?" not in path:
            uri = prefix + os.path.abspath(path)
    return uri


def error_code(exc: BaseException) -> str:
    """MLflow's error code of ``exc`` ('' for other exceptions)."""
    return getattr(exc, "error_code", "") if isinstance(exc, MlflowException) else ""


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created when missing (another process may race us)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except MlflowException as exc:
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
            "or choose another experiment name"
        )
    return exp.experiment_id


def find_run(client: MlflowClient, exp_id: str, rose_run: str) -> Any | None:
    """The active MLflow run tagged with ``rose_run``, oldest first if there are several."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{RUN_ID_TAG}` = '{rose_run}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=2,
        order_by=["attributes.start_time ASC"],
    )
    if len(runs) > 1:
        log.warning(
            "several MLflow runs carry %s=%s in experiment %s; using %s",
            RUN_ID_TAG,
            rose_run,
            exp_id,
            runs[0].info.run_id,
        )
    return runs[0] if runs else None


class RunWriter:
    """One rose run's MLflow run: found or created on first use, then fed events.

    ``position`` is how far the MLflow run holds the rose run; ``apply``
    skips what it already holds.  After a failed call the position is read
    back from MLflow before the next one (the call may have landed although
    its reply did not).
    """

    def __init__(
        self,
        client: MlflowClient,
        exp_id: str,
        rose_run: str,
        run_name: str | None = None,
    ) -> None:
        self.client = client
        self.exp_id = exp_id
        self.rose_run = rose_run
        self.run_name = run_name or run_name_for(rose_run)
        self.mlflow_run_id: str | None = None
        self.position = Position(0)
        self._uncertain = True  # read the position from MLflow before writing
        self.skipped_keys: set[str] = set()

    def open(self) -> Position:
        """Find the MLflow run of this rose run and read its position (no run: 0)."""
        run = find_run(self.client, self.exp_id, self.rose_run)
        if run is None:
            self.mlflow_run_id, self.position = None, Position(0)
        else:
            self.mlflow_run_id = run.info.run_id
            self.position = Position.parse(run.data.tags.get(POSITION_TAG))
        self._uncertain = False
        return self.position

    def _create(self, first: dict[str, Any]) -> str:
        run = self.client.create_run(
            self.exp_id,
            start_time=ms(first["ts"]),
            tags=creation_tags(first),
            run_name=self.run_name,
        )
        log.info("MLflow run %s created for rose run %s", run.info.run_id, self.rose_run)
        return run.info.run_id

    def apply(self, events: list[dict[str, Any]]) -> int:
        """Write ``events`` (consecutive, in order); returns how many are now held.

        Raises on the first failed call; ``applied_through(events)`` then says
        how many of them landed.
        """
        if self._uncertain:
            self.open()
        todo = [e for e in events if e["seq"] >= self.position.seq]
        if todo:
            try:
                if self.mlflow_run_id is None:
                    self.mlflow_run_id = self._create(todo[0])
                calls = plan(todo, self.position)
                for i, call in enumerate(calls):
                    # Mid-event positions always: resuming inside a split event is cheap.
                    last = i == len(calls) - 1
                    self._send(call, with_position=last or call.position.part != 0)
                    self.position = call.position
                    if call.skipped:
                        self._note_skipped(call.skipped)
            except Exception:
                self._uncertain = True
                raise
        return self.applied_through(events)

    def applied_through(self, events: list[dict[str, Any]]) -> int:
        """How many of ``events``, from the first, the MLflow run holds."""
        if not events:
            return 0
        return max(0, min(len(events), self.position.seq - events[0]["seq"]))

    def _send(self, call: Call, *, with_position: bool = True) -> None:
        """One call; the position tag (the call's last tag) only when ``with_position``.

        Within one ``apply`` only the last call writes the position: a tag write
        is a transaction of its own in MLflow's SQL store, and a stale position
        only means that a restart re-sends calls whose rows MLflow already holds
        (identical rows, which it skips).
        """
        assert self.mlflow_run_id is not None
        if call.status is not None:
            # Before the batch that moves the position past the stop event, so a
            # crash in between repeats both rather than leaving the run RUNNING.
            self.client.set_terminated(self.mlflow_run_id, call.status, end_time=call.end_time)
        tags = call.tags if with_position or call.status is not None else call.tags[:-1]
        self.client.log_batch(self.mlflow_run_id, metrics=call.metrics, params=call.params, tags=tags)

    def _note_skipped(self, skipped: list[str]) -> None:
        new = sorted({k for k in skipped if k not in self.skipped_keys})
        if new and len(self.skipped_keys) < MAX_SKIPPED_REPORTED:
            self.skipped_keys.update(new)
            log.info(
                "rose run %s: state values not logged to MLflow (not numbers): %s",
                self.rose_run,
                ", ".join(new[:20]),
            )
