"""The MLflow sink: every rose run on the bus as an MLflow run.

``rose sink mlflow --bus ~/rose-tracking/store/bus.json [--tracking-uri URI] [--experiment NAME]``

The mapping is the in-process MLflowTracker's
(:mod:`rose.integrations.mlflow_mapping`), so a run looks the same in MLflow
whichever way it got there.  What the sink adds is volume: the runtime hands
it hundreds of events of a run at once and they go out as a few
``log_batch`` calls (up to 1000 metrics each) instead of one per iteration,
and with ``--workers N`` up to N runs are written at once (each run in one
thread at a time, so its events never reorder): on a tracking server, where
every call waits for a round trip and the server's database, that multiplies
the rate (see :mod:`sinks.concurrent`).

Idempotent: each MLflow run is found by its ``rose.run_id`` tag and records
how far it holds its rose run (``rose.next_seq``, written in the same call as
the data).  A restarted sink, a second sink, or ``rose replay --into mlflow``
resumes there and never logs a metric step twice.  While the tracking store
is unreachable, calls fail fast and the runtime retries them with backoff
without moving past them; other runs carry on.

``mlflow`` is imported only when a sink is built, so ``rose --help`` and the
other sinks never pay for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from sinks.base import ApplyResult, RunSink, Sink
from sinks.kinds import Option, SinkKind

log = logging.getLogger(__name__)

#: Experiment used when --experiment is not given.
DEFAULT_EXPERIMENT = "rose"
#: HTTP settings for a tracking server, unless the user set MLflow's own variables:
#: fail fast and let the runtime back off (MLflow's default retries block for minutes).
#: MLflow reads them from the environment; the command line sets them (SinkKind.environment).
HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
#: MLflow unreachable is transient by nature: retry forever, never skip events.
DEFAULT_MAX_ATTEMPTS: int | None = None
#: Tracking URI schemes MLflow can use ("" is a local path: MLflow's file store).
TRACKING_SCHEMES = frozenset(
    ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
     "databricks-uc", "uc")
)  # fmt: skip
#: Upper bound of --workers.
MAX_WORKERS = 32

class MLflowKind(SinkKind):
    name = "mlflow"
    help = "log each run to MLflow: manifest params, per-iteration metrics, stop tags, status"
    epilog = """\
examples:
  rose sink mlflow --bus ~/rose-tracking/store/bus.json                       # ./mlflow.db
  rose sink mlflow --bus ~/rose-tracking/store/bus.json --tracking-uri http://127.0.0.1:5000 \\
      --experiment surrogate-v1
  rose replay runs/*.jsonl --into mlflow --experiment surrogate-v1
  rose replay rose-store/ --into mlflow --tracking-uri http://mlflow:5000 --workers 4
  mlflow ui --backend-store-uri sqlite:///mlflow.db

The tracking URI is --tracking-uri, else $MLFLOW_TRACKING_URI, else
sqlite:///mlflow.db.  Credentials for a tracking server come from MLflow's
environment variables (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD), never from the command line.  Runs are found again
by their rose.run_id tag, so restarts and replays log nothing twice.
"""
    options = (
        Option(
            "tracking_uri",
            "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
            metavar="URI",
        ),
        Option(
            "experiment",
            f"MLflow experiment for the runs, created if missing (default: {DEFAULT_EXPERIMENT})",
            metavar="NAME",
        ),
        Option(
            "workers",
            "runs written at once, each by its own thread; pays on a tracking server "
            "(http://...), not on SQLite [1]",
            type=int,
            default=1,
            metavar="N",
        ),
    )
    max_attempts = DEFAULT_MAX_ATTEMPTS
    env_defaults = HTTP_ENV_DEFAULTS

    def build(
        self,
        *,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        workers: int | None = 1,
        state_dir: Path | None = None,
    ) -> MLflowSink:
        if tracking_uri and urllib.parse.urlsplit(tracking_uri).password:
            raise ValueError(
                "--tracking-uri holds a password; put credentials in MLFLOW_TRACKING_USERNAME / "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
            )
        workers = 1 if workers is None else workers
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}")
        return MLflowSink(tracking_uri=tracking_uri, experiment=experiment, workers=workers)

    def check(self, sink: Sink, **options: Any) -> None:
        """A tracking URI MLflow can never use is a ValueError now (see MLflowSink.prepare)."""
        assert isinstance(sink, MLflowSink)
        sink.prepare()


def redact(uri: str) -> str:
    """``uri`` without user info, for logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class MLflowSink(Sink):
    """One MlflowClient shared by all runs; one :class:`MLflowRunSink` per rose run."""

    name = "mlflow"
    idempotent = True

    def __init__(
        self, tracking_uri: str | None = None, experiment: str | None = None, workers: int = 1
    ) -> None:
        from rose.integrations.mlflow_writer import resolve_tracking_uri

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment or DEFAULT_EXPERIMENT
        #: Runs applied at once (see sinks.concurrent); the client is shared by the threads.
        self.workers = workers
        self._client: Any = None
        self._exp_id: str | None = None

    def prepare(self) -> bool:
        """Reach the tracking store and the experiment now, so the first run needs no setup.

        A URI MLflow cannot use (unknown scheme, a store it refuses, a host that
        refuses connections or does not exist) raises ValueError at once: that
        is a typo, and retrying it forever helps nobody.  A store that is slow
        or answers with a server error is only logged (each run's open is
        retried by the runtime); a deleted experiment raises ValueError.
        """
        scheme = urllib.parse.urlsplit(self.tracking_uri).scheme.split("+")[0].lower()
        if scheme not in TRACKING_SCHEMES and not (len(scheme) == 1 and os.name == "nt"):
            raise ValueError(
                f"MLflow does not know the scheme of the tracking URI "
                f"{redact(self.tracking_uri)!r}; use sqlite:///FILE.db, http(s)://HOST:PORT or "
                "a database URL (postgresql://, mysql://)"
            )
        try:
            self._experiment_id()
            return True
        except ValueError:
            raise
        except Exception as exc:
            if not _transient(exc):
                text = str(exc)
                why = _describe(exc)
                if "refused" in text:
                    why = "connection refused (is the tracking server running there?)"
                elif "NameResolution" in text or "not known" in text or "resolve" in text:
                    why = "host name not found"
                raise ValueError(
                    f"MLflow cannot use the tracking URI {redact(self.tracking_uri)!r}: {why}"
                ) from None
            log.warning(
                "MLflow at %s not ready yet (%s); runs will be retried",
                redact(self.tracking_uri),
                _describe(exc),
            )
            return False

    def _experiment_id(self) -> str:
        if self._exp_id is None:
            from mlflow import MlflowClient

            from rose.integrations.mlflow_writer import experiment_id

            if self._client is None:
                self._client = MlflowClient(tracking_uri=self.tracking_uri)
            self._exp_id = experiment_id(self._client, self.experiment)
            log.info(
                "MLflow sink: experiment %r (%s) at %s",
                self.experiment,
                self._exp_id,
                redact(self.tracking_uri),
            )
        return self._exp_id

    def claim_outputs(self) -> None:
        """One sink per experiment: two would race on the same runs' next seq."""
        from sinks.state import OutputLock

        key = f"{self.tracking_uri}\n{self.experiment}".encode()
        digest = hashlib.sha256(key).hexdigest()[:16]
        if self.tracking_uri.startswith("sqlite:///") and "?" not in self.tracking_uri:
            path = Path(self.tracking_uri[len("sqlite:///") :] + f".rose-{digest}.lock")
        else:
            path = Path(tempfile.gettempdir()) / f"rose-locks-{os.getuid()}" / f"mlflow-{digest}"
        self._lock = OutputLock(
            path,
            f"MLflow experiment {self.experiment!r} at {redact(self.tracking_uri)} is being "
            "written by another MLflow sink (pid {pid}); stop that one, or use another "
            "--experiment",
        )
        self._lock.acquire()

    def release_outputs(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def open_run(self, run: str) -> RunSink:
        """Find (or prepare) the run's MLflow run; raising here makes the runtime retry."""
        from rose.integrations.mlflow_writer import RunWriter

        exp_id = self._experiment_id()
        writer = RunWriter(self._client, exp_id, run)
        writer.open()
        return MLflowRunSink(writer)


class MLflowRunSink(RunSink):
    """The MLflow run of one rose run."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def resume_seq(self) -> int | None:
        return self.writer.position.seq

    def apply(
        self, events: list[dict[str, Any]], lines: list[str | None] | None = None
    ) -> ApplyResult:
        try:
            return ApplyResult.ok(self.writer.apply(events))
        except Exception as exc:
            if _is_invalid(exc):
                return self._find_invalid(events, exc)
            return ApplyResult.retry(self.writer.applied_through(events), _describe(exc))

    def _find_invalid(self, events: list[dict[str, Any]], exc: Exception) -> ApplyResult:
        """MLflow refused a call of several events: apply one by one to find the culprit."""
        for i, event in enumerate(events):
            try:
                self.writer.apply([event])
            except Exception as one:
                done = self.writer.applied_through(events)
                if _is_invalid(one) and done == i:
                    return ApplyResult.reject(done, _describe(one))
                return ApplyResult.retry(done, _describe(one))
        # Went through one by one (the refusal was about the combination): all applied.
        log.warning(
            "run %s: a batch MLflow refused went through event by event (%s)",
            self.writer.rose_run,
            _describe(exc),
        )
        return ApplyResult.ok(self.writer.applied_through(events))


def _transient(exc: BaseException) -> bool:
    """At first contact: could waiting help (a slow or failing server), or is it a mistake?"""
    text = str(exc)
    return any(
        t in text
        for t in (
            "timed out",
            "Timeout",
            "Temporary failure in name resolution",
            "database is locked",
            " 429",
            " 500",
            " 502",
            " 503",
            " 504",
            "too many 5",
        )
    )


def _is_invalid(exc: BaseException) -> bool:
    """MLflow says the data itself is wrong (retrying the same call cannot help)."""
    from rose.integrations.mlflow_writer import error_code

    return error_code(exc) == "INVALID_PARAMETER_VALUE"


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}"
