"""Fixtures for the bus tests: brokers in threads or processes, clients, a real learner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from bus import BrokerThread, BusClient
from rose.al.active_learner import SequentialActiveLearner
from tests.polling import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(broker: BrokerThread) -> Iterator[BusClient]:
    c = BusClient(broker.backend, broker.replay, timeout_ms=10_000)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    """A context for raw test sockets; every socket is closed with linger 0 at the end."""
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


class BrokerProcess:
    """``python -m cli bus`` in a subprocess on fixed loopback ports (so it can be restarted)."""

    def __init__(self, store: Path, ports: tuple[int, int, int] | None = None) -> None:
        self.store = store
        self.ports = ports or (free_port(), free_port(), free_port())
        self.proc: subprocess.Popen | None = None

    @property
    def frontend(self) -> str:
        return f"tcp://127.0.0.1:{self.ports[0]}"

    @property
    def backend(self) -> str:
        return f"tcp://127.0.0.1:{self.ports[1]}"

    @property
    def replay(self) -> str:
        return f"tcp://127.0.0.1:{self.ports[2]}"

    def start(self, wait: bool = True) -> BrokerProcess:
        bus_file = self.store / "bus.json"
        old = bus_file.stat().st_mtime_ns if bus_file.exists() else None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "bus",
                "--store",
                str(self.store),
                "--frontend",
                self.frontend,
                "--backend",
                self.backend,
                "--replay",
                self.replay,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if wait:
            ok = wait_until(
                lambda: (
                    bus_file.exists()
                    and bus_file.stat().st_mtime_ns != old
                    or self.proc.poll() is not None
                )
            )
            assert ok and self.proc.poll() is None, self.output()
            info = json.loads(bus_file.read_text())
            assert info["pid"] == self.proc.pid
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, then wait (bounded); returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise

    def output(self) -> str:
        if self.proc is None or self.proc.poll() is None:
            return ""
        out, err = self.proc.communicate(timeout=10)
        return (out + err).decode(errors="replace")


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    bp = BrokerProcess(tmp_path / "store")
    try:
        yield bp
    finally:
        if bp.proc is not None and bp.proc.poll() is None:
            bp.proc.kill()
            bp.proc.wait(timeout=30)
        if bp.proc is not None:
            for stream in (bp.proc.stdout, bp.proc.stderr):
                if stream is not None:
                    stream.close()


def build_learner(engine, *, task_delay: float = 0.0) -> SequentialActiveLearner:
    """A real sequential active learner with Python-function tasks (fast, no shell)."""
    learner = SequentialActiveLearner(engine)

    @learner.simulation_task(as_executable=False, log_params={"n": 4})
    async def simulate(*_deps):
        if task_delay:
            import asyncio

            await asyncio.sleep(task_delay)
        return {"n_samples": 4}

    @learner.training_task(as_executable=False)
    async def train(*_deps):
        return {f"k{i}": i * 0.5 for i in range(20)}

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*_deps):
        return {"picked": [1, 2, 3]}

    @learner.as_stop_criterion(metric_name="mse", threshold=-1.0, operator="<", as_executable=False)
    async def check(*_deps):
        return 0.25

    return learner
