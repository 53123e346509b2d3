"""Fixtures for the MLflow sink on a real bus: a broker thread, `rose sink mlflow`
processes, and a real `mlflow server` on loopback for the outage test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sinks.conftest import SinkProcess

MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


@pytest.fixture(autouse=True)
def _no_inherited_mlflow_env(monkeypatch):
    """Every test names its own store; nothing from the caller's environment leaks in."""
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def broker(tmp_path: Path):
    from bus import BrokerThread

    with BrokerThread(tmp_path / "store") as b:
        yield b


@pytest.fixture
def mlflow_sink(tmp_path: Path) -> Iterator:
    """Start ``rose sink mlflow ...`` processes; every one is killed at the end."""
    made: list[SinkProcess] = []

    def make(*args: str, name: str = "sink") -> SinkProcess:
        env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
        p = SinkProcess(["mlflow", *args], tmp_path / f"{name}.log", env)
        p.env = {k: v for k, v in p.env.items() if k not in MLFLOW_ENV}
        made.append(p)
        return p.start()

    yield make
    for p in made:
        p.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MLflowServer:
    """``mlflow server`` on 127.0.0.1 in its own process group (so a kill takes its workers)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 90.0) -> MLflowServer:
        self.starts += 1
        log = (self.root / f"mlflow-server-{self.starts}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                "--default-artifact-root", str(self.root / "artifacts"),
                "--workers", "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"mlflow server not up within {timeout}s")

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MLflowServer]:
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server = MLflowServer(root, free_port())
    try:
        yield server
    finally:
        server.kill()
