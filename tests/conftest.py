"""Shared fixtures: a real WorkflowEngine, a broker thread, and a recording tracker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from radical.asyncflow import WorkflowEngine
from rhapsody.backends import ConcurrentExecutionBackend

from bus import BrokerThread
from rose import TrackerBase
from rose.events import manifest_to_body, state_to_body
from rose.tracking import event_context


@pytest.fixture(autouse=True)
def _fallback_dir(tmp_path, monkeypatch):
    """BusTrackers' fallback logs go into the test's folder, never the user's state dir."""
    monkeypatch.setenv("ROSE_FALLBACK_DIR", str(tmp_path / "fallback"))
    return tmp_path / "fallback"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerThread]:
    """A real broker in a thread on free loopback ports, its store in the test's folder."""
    with BrokerThread(tmp_path / "store") as b:
        yield b


@pytest.fixture
async def engine(tmp_path):
    """A real radical.asyncflow engine; its session folder stays inside tmp_path."""
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(max_workers=4))
    eng = await WorkflowEngine.create(backend, work_dir=str(tmp_path))
    try:
        yield eng
    finally:
        await eng.shutdown()


class Recorder(TrackerBase):
    """Records every callback as plain data, with the event context it arrived under."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any]] = []

    @staticmethod
    def _ctx() -> tuple | None:
        ctx = event_context()
        return (ctx.run, ctx.seq, ctx.ts) if ctx else None

    def on_start(self, manifest) -> None:
        self.calls.append(("start", self._ctx(), manifest_to_body(manifest)))

    def on_iteration(self, state) -> None:
        body = state_to_body(state)
        body["metric_history"] = list(state.metric_history)
        self.calls.append(("iteration", self._ctx(), body))

    def on_stop(self, final_state, reason) -> None:
        final = None
        if final_state is not None:
            final = state_to_body(final_state)
            final["metric_history"] = list(final_state.metric_history)
        self.calls.append(("stop", self._ctx(), {"reason": reason, "final_state": final}))

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]

    @property
    def stop_reason(self) -> str | None:
        stops = [c[2]["reason"] for c in self.calls if c[0] == "stop"]
        assert len(stops) <= 1, f"on_stop fired {len(stops)} times"
        return stops[0] if stops else None


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def wait_for_stop(rec: Recorder, bound: float = 5.0) -> None:
    """After a break, asyncio's finalizer closes the generator: give it a few turns."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while rec.stop_reason is None and loop.time() < deadline:
        await asyncio.sleep(0.01)


class Exploding(TrackerBase):
    """A tracker that raises in every callback."""

    def on_start(self, manifest) -> None:
        raise RuntimeError("start boom")

    def on_iteration(self, state) -> None:
        raise RuntimeError("iteration boom")

    def on_stop(self, final_state, reason) -> None:
        raise RuntimeError("stop boom")
