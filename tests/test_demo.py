"""The demo's machinery, run non-interactively: real broker and sink processes, MLflow on SQLite."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

DEMO = Path(__file__).resolve().parents[1] / "examples" / "bus_demo" / "run_demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("run_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_demo"] = module
    spec.loader.exec_module(module)
    return module


def _children() -> set[int]:
    """Live child processes of this test process (Linux /proc)."""
    me = str(os.getpid())
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            kids.add(int(stat.parent.name))
    return kids


@pytest.mark.timeout(240)
@pytest.mark.parametrize("chaos", [False, True])
async def test_demo_end_to_end(demo, tmp_path, chaos, capsys):
    before = _children()
    result = await demo.run_demo(tmp_path / "out", learners=2, pace=0.05, chaos=chaos, live=False)
    assert _children() <= before  # every broker and sink process was stopped

    assert result.reason == "criterion_met"
    assert set(result.iterations) == {0, 1} and all(n >= 3 for n in result.iterations.values())
    assert all(v < 0.01 for v in result.final_mse.values())
    total = sum(result.iterations.values())
    assert result.stored_events == result.file_events == result.file_unique == total + 2
    assert result.mlflow_steps == result.iterations  # every step once, after a kill -9 too
    assert result.nothing_lost
    assert (result.chaos is not None) == chaos

    assert result.plot.stat().st_size > 10_000 and result.jsonl.is_file()
    if chaos:
        return
    # The closing commands work as printed, in a plain shell (no venv on PATH), from where
    # the user ran the demo.
    caller = tmp_path / "elsewhere"
    caller.mkdir()
    os.environ["ROSE_DEMO_CWD"] = str(caller)
    try:
        text = demo.summary(result)
    finally:
        del os.environ["ROSE_DEMO_CWD"]
    assert "nothing lost, nothing duplicated" in text
    commands = {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip()
        for line in text.splitlines() if line.startswith(("browse in MLflow", "replay into"))
    }
    mlflow_ui = shlex.split(commands["browse in MLflow"])
    assert mlflow_ui[1:] == ["ui", "--backend-store-uri", f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"]
    assert os.access(caller / mlflow_ui[0], os.X_OK)
    plain = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", "-c", commands["replay into a new sink"]], cwd=caller,
                          env=plain, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    copy = tmp_path / "out" / "replayed" / result.jsonl.name
    assert copy.read_bytes() == result.jsonl.read_bytes()
