"""MLflowTracker: a learner's run as an MLflow run, logged from inside the learner.

    pip install -e '.[mlflow]'   # from the repository clone

    from rose.integrations.mlflow_tracker import MLflowTracker
    learner.add_tracker(MLflowTracker(experiment_name="surrogate-v1", run_name="gp-adaptive-kernel"))

Params come from the pipeline manifest, metrics from every iteration
(``step`` = iteration), the stop reason and final iteration become tags and
the run ends FINISHED (FAILED on error); see
:mod:`rose.integrations.mlflow_mapping` for the exact mapping, which the
MLflow sink (``rose sink mlflow``) shares, so a run tracked here, through the
bus, or replayed from its event log looks the same in MLflow.  Needs the
``mlflow`` extra; without it the constructor raises ImportError with the
install command (:mod:`rose.extras`).

Each iteration costs one ``log_batch`` round trip inside the learner (about
10 ms on SQLite).  A failed call raises (the learner logs it and carries on)
and its events are sent again with the next callback.  When that matters, publish through ``bus.BusTracker`` and
run ``rose sink mlflow`` on the login node instead.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rose.events.feed import EventTracker
from rose.extras import require

if TYPE_CHECKING:
    from rose.integrations.mlflow_writer import RunWriter

log = logging.getLogger(__name__)

#: Events kept for a retry with the next callback while MLflow cannot be reached.
MAX_PENDING_EVENTS = 10_000


class MLflowTracker(EventTracker):
    """Log a learner run to MLflow through its own ``MlflowClient``.

    ``tracking_uri``: the argument, then ``MLFLOW_TRACKING_URI``, then
    ``sqlite:///mlflow.db``.  ``run_name`` names the MLflow run (default:
    the rose run id).  The MLflow run carries a ``rose.run_id`` tag, so the
    same run replayed later into the same experiment is recognised and not
    logged twice.  A user's own ``mlflow.start_run()`` is never touched.
    """

    def __init__(
        self,
        experiment_name: str,
        run_name: str | None = None,
        *,
        tracking_uri: str | None = None,
    ) -> None:
        super().__init__()
        require("mlflow", "mlflow", "MLflowTracker")  # here, not later inside add_tracker()
        from mlflow import MlflowClient

        from rose.integrations.mlflow_writer import resolve_tracking_uri

        if not experiment_name or not isinstance(experiment_name, str):
            raise ValueError("experiment_name must be a non-empty string, e.g. 'surrogate-v1'")
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self._exp_id: str | None = None
        self._writer: RunWriter | None = None
        self._pending: list[dict[str, Any]] = []
        self._dropped = 0

    @property
    def mlflow_run_id(self) -> str | None:
        """The MLflow run of the current (or last) rose run, once it exists."""
        return self._writer.mlflow_run_id if self._writer else None

    def emit(self, event: dict[str, Any]) -> None:
        writer = self._writer
        if writer is None or writer.rose_run != event["run"]:
            self._pending.clear()  # a new rose run: the last one's leftovers are moot
            writer = self._writer = None
        self._pending.append(event)
        if len(self._pending) > MAX_PENDING_EVENTS:
            del self._pending[0]
            self._dropped += 1
            if self._dropped == 1:
                log.error(
                    "MLflow unreachable for %d events; dropping the oldest", MAX_PENDING_EVENTS
                )
        if writer is None:
            from rose.integrations.mlflow_writer import RunWriter, experiment_id

            if self._exp_id is None:
                self._exp_id = experiment_id(self.client, self.experiment_name)
            writer = self._writer = RunWriter(
                self.client, self._exp_id, event["run"], self.run_name
            )
        try:
            writer.apply(self._pending)
        finally:
            # What landed is done; what did not is retried with the next callback.
            del self._pending[: writer.applied_through(self._pending)]
