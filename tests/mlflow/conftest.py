"""Fixtures for the MLflow sink on a real bus: a broker thread, `rose sink mlflow`
processes, a real `mlflow server` on loopback for the outage test, and a real
`mlflow server` on a throwaway PostgreSQL for the whole session (the backend
production tracking servers use)."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mlflow.servers import MLflowServer, PostgresServer, postgres_missing
from tests.polling import free_port
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


@pytest.fixture(scope="session")
def _postgres_mlflow_server() -> Iterator[MLflowServer]:
    why = postgres_missing()
    if why is not None:
        if os.environ.get("ROSE_REQUIRE_POSTGRES"):  # CI: a missing server is a failure
            pytest.fail(f"ROSE_REQUIRE_POSTGRES is set but {why}")
        pytest.skip(f"no PostgreSQL-backed MLflow server: {why}")
    pg = PostgresServer()
    root = Path(tempfile.mkdtemp(prefix="rose-mlflow-pg-"))
    server = None
    try:
        pg.start()
        server = MLflowServer(root, backend_uri=pg.create_database("mlflow"), workers=2)
        yield server.start()
    finally:
        if server is not None:
            server.kill()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_mlflow(_postgres_mlflow_server: MLflowServer) -> MLflowServer:
    """The session's PostgreSQL-backed tracking server, up (a test may kill and restart it)."""
    server = _postgres_mlflow_server
    try:
        with urllib.request.urlopen(f"{server.uri}/health", timeout=5) as r:
            up = r.status == 200
    except OSError:
        up = False
    if not up:
        server.kill()
        server.start()
    return server


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MLflowServer]:
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server = MLflowServer(root, free_port())
    try:
        yield server
    finally:
        server.kill()
