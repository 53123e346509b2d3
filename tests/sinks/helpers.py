"""Event factories, publishers, a hand-moved clock and a runtime thread for the sink tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bus import BusTracker
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


def interleave(*runs: list[dict]) -> list[dict]:
    """The events of several runs in turn, as concurrent learners would send them."""
    out = []
    for i in range(max(len(r) for r in runs)):
        out.extend(r[i] for r in runs if i < len(r))
    return out


def publish(bus_file: Path, events: list[dict], *, pace_every: int = 0) -> BusTracker:
    """Publish ready-made events through a real BusTracker, as a learner would."""
    tracker = BusTracker(bus=bus_file)
    for i, e in enumerate(events):
        tracker.emit(e)
        if pace_every and i % pace_every == 0:
            time.sleep(0.002)
    assert tracker.flush(20_000)
    return tracker


class Publisher:
    """``publish`` the runs interleaved from a thread, while the test kills and restarts sinks."""

    def __init__(self, bus_file: Path, runs: dict[str, list[dict]], pace_every: int) -> None:
        self.done = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(bus_file, interleave(*runs.values()), pace_every),
            name="publisher", daemon=True,
        )  # fmt: skip
        self.thread.start()

    def _run(self, bus_file: Path, events: list[dict], pace_every: int) -> None:
        publish(bus_file, events, pace_every=pace_every).close()
        self.done.set()

    def join(self, timeout: float) -> None:
        """Wait (bounded) for the last event to be flushed to the broker."""
        self.thread.join(timeout)
        assert self.done.is_set()


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
