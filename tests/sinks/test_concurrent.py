"""ConcurrentRuntime: runs applied by several threads, each run's events in order, once."""

from __future__ import annotations

import threading
import time

from sinks.concurrent import ConcurrentRuntime, make_runtime
from sinks.memory import InMemorySink
from sinks.runtime import RuntimeConfig, SinkRuntime
from sinks.sources import ListSource
from tests.sinks.helpers import run_events


def interleave(runs: list[list[dict]]) -> list[dict]:
    out = []
    for i in range(max(len(r) for r in runs)):
        out.extend(r[i] for r in runs if i < len(r))
    return out


class SlowSink(InMemorySink):
    """Each apply takes a few ms, like a round trip; records how many overlap."""

    def __init__(self, workers: int) -> None:
        super().__init__(idempotent=True)
        self.workers = workers
        self.busy = 0
        self.most_busy = 0
        self.threads: set[str] = set()
        self._gauge = threading.Lock()

    def open_run(self, run: str):
        inner = super().open_run(run)
        sink = self

        class Run(type(inner)):
            def apply(self, events, lines=None):
                with sink._gauge:
                    sink.busy += 1
                    sink.most_busy = max(sink.most_busy, sink.busy)
                    sink.threads.add(threading.current_thread().name)
                try:
                    time.sleep(0.003)
                    return super().apply(events, lines)
                finally:
                    with sink._gauge:
                        sink.busy -= 1

        return Run(self, run)


def test_runs_go_in_parallel_and_each_run_stays_in_order():
    runs = {f"c{i}": run_events(f"c{i}", 60) for i in range(8)}
    sink = SlowSink(workers=4)
    config = RuntimeConfig(max_batch=7)  # many batches per run
    runtime = make_runtime(sink, ListSource(interleave(list(runs.values()))), config=config)
    assert isinstance(runtime, ConcurrentRuntime)
    counters = runtime.run()
    assert counters.applied == sum(len(e) for e in runs.values())
    assert counters.duplicates == counters.failed == counters.gaps == 0
    for run, events in runs.items():
        assert sink.seqs(run) == [e["seq"] for e in events], run
    assert 1 < sink.most_busy <= 4
    assert len(sink.threads) > 1


def test_failures_are_handled_as_by_the_plain_runtime():
    """A raise is isolated and retried, a refusal skipped; the others finish meanwhile."""
    runs = {f"f{i}": run_events(f"f{i}", 30) for i in range(4)}
    results = {}
    for workers in (1, 3):
        sink = SlowSink(workers=workers)
        sink.fail("f1", 10, times=3)  # raises three times
        sink.fail("f2", 5, how="reject")  # never applicable: skipped alone
        config = RuntimeConfig(max_batch=8, retry_initial_ms=1, retry_max_ms=5)
        source = ListSource(interleave(list(runs.values())))
        counters = make_runtime(sink, source, config=config).run()
        results[workers] = (counters, {run: sink.seqs(run) for run in runs})
    assert results[1] == results[3]
    counters, seqs = results[3]
    assert counters.failed == 1 and counters.retries >= 2
    for run, events in runs.items():
        assert seqs[run] == [e["seq"] for e in events if (run, e["seq"]) != ("f2", 5)], run


def test_sinks_without_workers_get_the_plain_runtime():
    sink = InMemorySink()
    runtime = make_runtime(sink, ListSource(run_events("a", 3)))
    assert type(runtime) is SinkRuntime


def test_one_worker_gets_whole_batches_of_interleaved_runs():
    """Several batches per round: each of 8 interleaved runs gets max_batch events per call."""
    runs = {f"b{i}": run_events(f"b{i}", 98) for i in range(8)}
    sink = SlowSink(workers=1)
    config = RuntimeConfig(max_batch=50)
    counters = make_runtime(sink, ListSource(interleave(list(runs.values()))), config=config).run()
    assert counters.applied == 800
    assert len(sink.threads) == 1  # the runtime's one backend worker: one call at a time
    assert sorted({n for _, n in sink.batches}) == [50]
    for run, events in runs.items():
        assert sink.seqs(run) == [e["seq"] for e in events], run
