"""The MLflow examples run as their docstrings say, and leave their MLflow runs where expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("sklearn")

from tests.mlflow.helpers import mlflow_content, sqlite_uri  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "integrations" / "tracking" / "mlflow"


def run_example(name: str, cwd: Path, *args: str, timeout: float = 180) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_run_me_tracker_logs_the_branin_run(tmp_path):
    out = run_example("run_me_tracker.py", tmp_path, "--max-iter", "4")
    assert "MLflow run:" in out
    (run,) = mlflow_content(sqlite_uri(tmp_path / "mlflow.db"), "surrogate-v1").values()
    assert run["run_name"] == "gp-adaptive-kernel"
    assert run["params"]["task.training.kernel"] == "C*RBF+White"
    assert run["params"]["learner_type"] == "SequentialActiveLearner"
    assert [m[0] for m in run["metrics"]["mean_squared_error_mse"]] == [0, 1, 2, 3]
    assert run["tags"]["stop_reason"] == "max_iter_reached"
    assert run["status"] == "FINISHED"
    assert not (tmp_path / "mlruns").exists()


def test_run_me_bus_gives_the_same_mlflow_run_through_broker_and_sink(tmp_path):
    tracked, bused = tmp_path / "tracker", tmp_path / "bus"
    tracked.mkdir()
    bused.mkdir()
    run_example("run_me_tracker.py", tracked, "--max-iter", "3")
    out = run_example("run_me_bus.py", bused, "--max-iter", "3")
    assert "rose.run_id=branin-gp-" in out
    (a,) = mlflow_content(sqlite_uri(tracked / "mlflow.db"), "surrogate-v1").values()
    (b,) = mlflow_content(sqlite_uri(bused / "mlflow.db"), "surrogate-v1").values()
    # Same problem, same seed: the same params, metric keys, steps and values.
    assert a["params"] == b["params"]
    assert a["metrics"].keys() == b["metrics"].keys()
    for key in a["metrics"]:
        assert [(m[0], m[2]) for m in a["metrics"][key]] == [
            (m[0], m[2]) for m in b["metrics"][key]
        ]
    assert (a["status"], a["tags"]["stop_reason"]) == (b["status"], b["tags"]["stop_reason"])
    sink_log = (bused / "runs-bus" / "sink.log").read_text()
    assert "Traceback" not in sink_log
