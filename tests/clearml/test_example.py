"""The ClearML example runs as written, offline, and leaves one task with series A and B."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rose.integrations.clearml_mapping import clean_child_env
from tests.clearml.conftest import normalized, sessions

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/integrations/tracking/clearml/run_me.py"


def test_example_runs_offline(tmp_path):
    cache = tmp_path / "cache"
    env = clean_child_env()
    env.update(CLEARML_OFFLINE_MODE="1", CLEARML_CACHE_DIR=str(cache))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--max-iter", "2", "--work-dir", str(tmp_path / "runs")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ClearML task: offline-" in proc.stdout, proc.stdout[-1500:] + proc.stderr[-3000:]
    (session,) = sessions(cache)
    got = normalized(session)
    assert got["name"] == "ensemble-run-01" and got["project"] == "ROSE-Materials-UQ"
    assert {s for (t, s, _, _) in got["scalars"] if t == "mean_squared_error_mse"} == {"A", "B"}
    assert "stop:max_iter_reached" in got["tags"]
    assert got["params"]["General/learner_type"][0] == "ParallelUQLearner"
