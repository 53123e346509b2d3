"""Fixtures for sink tests on a real bus: a broker thread and `rose sink` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ChildProcess

REPO = Path(__file__).resolve().parents[2]


class SinkProcess(ChildProcess):
    """``rose sink ...`` as a real process; every exit path kills it (bounded)."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> SinkProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "-v", "sink", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.log_path.parent,
        )
        log.close()
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def sink_process(tmp_path: Path) -> Iterator:
    made: list[SinkProcess] = []

    def make(*args: str, name: str = "sink", env: dict | None = None) -> SinkProcess:
        p = SinkProcess(list(args), tmp_path / f"{name}.log", env)
        made.append(p)
        return p.start()

    yield make
    for p in made:
        p.kill()
