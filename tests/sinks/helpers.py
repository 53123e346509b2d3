"""Event factories and small waiting helpers for the sink tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rose.events import iteration_event, start_event, stop_event
from rose.tracking import (
    CriterionManifest,
    EventContext,
    IterationState,
    PipelineManifest,
    TaskManifest,
)
from sinks.runtime import RuntimeConfig, SinkRuntime

MANIFEST = PipelineManifest(
    learner_type="SequentialActiveLearner",
    tasks={"training": TaskManifest("train", "m", False, {}, {"kernel": "rbf"})},
    criterion=CriterionManifest("check", "m", False, {}, {}, "mean_squared_error_mse", 0.01, "<"),
)


def run_events(run: str, iterations: int = 5, *, t0: float = 1_700_000_000.0) -> list[dict]:
    """A complete run: start, ``iterations`` iterations, stop."""
    out = [start_event(EventContext(run, 0, t0, {"host": "h", "pid": 1}), MANIFEST)]
    for i in range(iterations):
        state = IterationState(
            iteration=i,
            metric_name="mean_squared_error_mse",
            metric_value=1.0 / (i + 1),
            metric_threshold=0.01,
            state={"loss": 0.5 / (i + 1), "n": i},
        )
        out.append(iteration_event(EventContext(run, i + 1, t0 + i + 1), state))
    out.append(
        stop_event(EventContext(run, iterations + 1, t0 + iterations + 2), None, "max_iter_reached")
    )
    return out


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(pred: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class RuntimeThread:
    """Run a SinkRuntime in a named thread; ``stop()`` joins with a bound."""

    def __init__(self, runtime: SinkRuntime) -> None:
        self.runtime = runtime
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sink-runtime-test", daemon=True)

    def _run(self) -> None:
        try:
            self.runtime.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> RuntimeThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.runtime.stop()
        self.thread.join(20)
        assert not self.thread.is_alive(), "runtime did not stop"
        if self.error is not None:
            raise self.error


def fast_config(**kw: Any) -> RuntimeConfig:
    base = dict(
        retry_initial_ms=1.0,
        retry_max_ms=5.0,
        gap_grace_ms=50.0,
        fill_interval_ms=1.0,
        checkpoint_interval_ms=10.0,
        status_interval_ms=10.0,
    )
    base.update(kw)
    return RuntimeConfig(**base)
