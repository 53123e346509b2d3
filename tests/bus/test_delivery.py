"""End to end: a real learner with a BusTracker delivers every event exactly once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from bus import BrokerThread, BusClient, BusTracker
from rose.eventlog import read_events
from rose.events import decode, plain_equal
from rose.integrations.file_tracker import FileTracker
from rose.tracking import TrackerBase
from tests.polling import free_port, wait_until

from .conftest import REPO, build_learner

N_ITER = 5
N_EVENTS = N_ITER + 2  # start, iterations, stop


def _store_events(client: BusClient, run: str) -> list[dict]:
    return [decode(e.payload) for e in client.run_events(run)]


@pytest.mark.parametrize("rep", range(20))
async def test_learner_run_reaches_subscriber_and_store_exactly_once(engine, tmp_path, rep):
    with BrokerThread(tmp_path / "store") as broker:
        client = BusClient(broker.backend, broker.replay, timeout_ms=10_000)
        try:
            stream = client.subscribe(0, idle_timeout_ms=100)
            assert next(stream) is None  # caught up with an empty store, now following live
            learner = build_learner(engine)
            # Created 0 ms before add_tracker, which sends `start` at once.
            learner.add_tracker(BusTracker(broker.frontend))
            learner.add_tracker(FileTracker(tmp_path / "local.jsonl"))
            async for _ in learner.start(max_iter=N_ITER):
                pass
            bus_tracker = learner._trackers[0]
            bus_tracker.close()
            assert bus_tracker.dropped == 0

            seen = []
            while len(seen) < N_EVENTS:
                item = next(stream)
                if item is not None:
                    seen.append(item)
            assert [e.offset for e in seen] == list(range(N_EVENTS))
            assert [(e.run, e.seq) for e in seen] == [(learner.run_id, s) for s in range(N_EVENTS)]

            stored = _store_events(client, learner.run_id)
            local = list(read_events(tmp_path / "local.jsonl"))
            assert len(stored) == N_EVENTS
            assert all(plain_equal(a, b) for a, b in zip(stored, local, strict=True))
            stats = client.stats()
            assert stats["stored"] == N_EVENTS and stats["runs"] == {learner.run_id: N_EVENTS - 1}
            stream.close()
        finally:
            client.close()


class _Timed(TrackerBase):
    """Measures how long each callback of the wrapped tracker takes."""

    def __init__(self, inner: TrackerBase) -> None:
        self.inner = inner
        self.durations: list[tuple[str, float]] = []

    def _timed(self, name, *args):
        t0 = time.perf_counter()
        getattr(self.inner, name)(*args)
        self.durations.append((name, time.perf_counter() - t0))

    def on_start(self, manifest):
        self._timed("on_start", manifest)

    def on_iteration(self, state):
        self._timed("on_iteration", state)

    def on_stop(self, final_state, reason):
        self._timed("on_stop", final_state, reason)


async def test_broker_down_for_the_whole_run(engine, tmp_path):
    spool = tmp_path / "spool.jsonl"
    tracker = BusTracker(
        f"tcp://127.0.0.1:{free_port()}", spool=spool, start_wait_ms=200, flush_timeout_ms=300
    )
    timed = _Timed(tracker)
    learner = build_learner(engine)
    learner.add_tracker(timed)
    states = [s async for s in learner.start(max_iter=N_ITER)]
    assert len(states) == N_ITER
    tracker.close()

    # Each callback stays within its documented bound (plus slack for a loaded machine).
    bound = {"on_start": 0.2, "on_iteration": 0.002, "on_stop": 0.3}
    assert [n for n, _ in timed.durations] == ["on_start"] + ["on_iteration"] * N_ITER + ["on_stop"]
    for name, took in timed.durations:
        assert took < bound[name] + 5.0, (name, took)
    events = list(read_events(spool, strict=True))
    assert [e["seq"] for e in events] == list(range(N_EVENTS))
    assert {e["run"] for e in events} == {learner.run_id}
    assert tracker.sent == 0 and tracker.spooled == N_EVENTS
    # never reached a broker: all of them are in the fallback log, none dropped
    assert tracker.dropped == 0 and tracker.fallback == N_EVENTS


def test_learner_process_exits_promptly_with_the_broker_down(tmp_path):
    """No close(), no broker: the interpreter still exits by itself, spool complete."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor
        from radical.asyncflow import WorkflowEngine
        from rhapsody.backends import ConcurrentExecutionBackend
        from bus import BusTracker
        from tests.bus.conftest import build_learner

        async def main():
            backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(2))
            engine = await WorkflowEngine.create(backend, work_dir={str(tmp_path)!r})
            learner = build_learner(engine)
            learner.add_tracker(BusTracker("tcp://127.0.0.1:{free_port()}",
                                           spool={str(tmp_path / "spool.jsonl")!r}))
            async for _ in learner.start(max_iter=3):
                pass
            await engine.shutdown()

        asyncio.run(main())
        print("done")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout
    assert [e["seq"] for e in read_events(tmp_path / "spool.jsonl")] == list(range(5))


async def test_broker_kill9_and_restart_mid_run(engine, tmp_path, broker_process):
    broker_process.start()
    n_iter = 15
    tracker = BusTracker(broker_process.frontend, flush_timeout_ms=20_000)
    learner = build_learner(engine)
    learner.add_tracker(tracker)
    async for state in learner.start(max_iter=n_iter):
        if state.iteration == 4:
            broker_process.kill()  # kill -9: whatever was in flight is lost
        if state.iteration == 6:
            broker_process.start(wait=False)  # same ports, same store
    tracker.close()  # waits (bounded) for the restarted broker to subscribe, then flushes
    assert tracker.subscriptions >= 2 and tracker.dropped == 0

    with BusClient(broker_process.backend, broker_process.replay, timeout_ms=10_000) as client:
        expected = list(range(n_iter + 2))
        assert wait_until(lambda: [e.seq for e in client.run_events(learner.run_id)] == expected), [
            e.seq for e in client.run_events(learner.run_id)
        ]
        assert client.stats()["runs"] == {learner.run_id: n_iter + 1}
    assert broker_process.stop() == 0
