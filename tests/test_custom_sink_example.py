"""The example sink kind of docs/custom-sink.md (examples/custom_sink/) does what the page says."""

from __future__ import annotations

import csv
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rose.al import SequentialActiveLearner
from rose.integrations.file_tracker import FileTracker
from rose.metrics import MEAN_SQUARED_ERROR_MSE
from sinks.runtime import SinkRuntime
from sinks.sources import LogSource

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_sink"
MSE = [0.5, 0.1, 0.005]


@pytest.fixture
def csv_sink(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return importlib.import_module("csv_sink")


@pytest.fixture
async def log(engine, tmp_path) -> Path:
    """A real run's event log, written by the in-process FileTracker."""
    learner = SequentialActiveLearner(engine, run_name="csv-example")
    values = iter(MSE)

    @learner.simulation_task(as_executable=False)
    async def simulate(*args, **kwargs):
        return {"n_labeled": 10}

    @learner.training_task(as_executable=False)
    async def train(*args, **kwargs):
        return {"train_loss": 0.1, "note": "two\nlines"}

    @learner.active_learn_task(as_executable=False)
    async def select(*args, **kwargs):
        return {"picked": 5}

    @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.01, as_executable=False)
    async def check(*args, **kwargs):
        return next(values)

    tracker = FileTracker(tmp_path / "runs" / "run.jsonl")
    learner.add_tracker(tracker)
    async for _ in learner.start(max_iter=10):
        pass
    return tracker.path


def replay(csv_sink, log: Path, out: Path, keys: list[str]):
    return SinkRuntime(csv_sink.CsvSink(out, keys), LogSource([log])).run()


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_one_row_per_iteration_and_replaying_twice_changes_nothing(csv_sink, log, tmp_path):
    out = tmp_path / "table"
    counters = replay(csv_sink, log, out, ["train_loss", "note"])
    assert counters.applied == len(MSE) + 2  # start, the iterations, stop
    (path,) = out.glob("csv-example-*.csv")
    table = rows(path)
    assert [r["iteration"] for r in table] == ["0", "1", "2"]
    assert [float(r["metric_value"]) for r in table] == MSE
    assert table[-1]["should_stop"] == "True"
    assert table[0]["train_loss"] == "0.1" and table[0]["note"] == "two lines"
    before = path.read_bytes()

    again = replay(csv_sink, log, out, ["train_loss", "note"])
    assert again.applied == 1  # only the stop event, which writes no row
    assert path.read_bytes() == before


def test_a_torn_last_row_is_cut_and_rewritten(csv_sink, log, tmp_path):
    out = tmp_path / "table"
    replay(csv_sink, log, out, [])
    (path,) = out.glob("*.csv")
    whole = path.read_bytes()
    os.truncate(path, len(whole) - 7)  # a sink killed in the middle of its last row
    replay(csv_sink, log, out, [])
    assert path.read_bytes() == whole


def install_example(tmp: Path) -> Path:
    """pip-install the example as the package it is, into ``tmp/site`` (not this venv).

    From a copy, so the build leaves nothing in the repository; put the returned
    directory on PYTHONPATH and ``rose`` finds the kind by its entry point.
    """
    src, site = tmp / "csv-sink-src", tmp / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
           str(src)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return site


def test_installed_it_runs_as_rose_replay_into_csv(log, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(install_example(tmp_path)))
    out = tmp_path / "table"
    cmd = [sys.executable, "-m", "cli", "replay", str(log), "--into", "csv"]
    cmd += ["--out", str(out), "--keys", "picked"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "5 event(s) into csv: 5 applied" in first.stderr
    (path,) = out.glob("*.csv")
    assert [r["picked"] for r in rows(path)] == ["5"] * len(MSE)

    bad = subprocess.run([*cmd, "--keys", "seq"], capture_output=True, text=True, timeout=60,
                         env=env)  # fmt: skip
    assert bad.returncode == 2
    assert "--keys seq: already a column" in bad.stderr


def test_a_kind_that_cannot_load_is_one_line_and_the_others_stay(tmp_path):
    """A broken third-party kind is left out with one warning, never a traceback."""
    site = tmp_path / "site"
    dist = site / "broken_kind-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-kind\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rose.sinks]\nbroken = no_such_module:Kind\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    res = subprocess.run([sys.executable, "-m", "cli", "sink", "file", "--help"],
                         capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if "broken" in ln]
    assert "sink kind 'broken' cannot be loaded" in line and "no_such_module" in line
    assert "--out DIR" in res.stdout
