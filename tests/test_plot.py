"""rose plot and run histories, from logs a real parallel run wrote."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.main import main
from rose import history
from rose.al import ParallelActiveLearner
from rose.integrations.file_tracker import FileTracker
from rose.metrics import MEAN_SQUARED_ERROR_MSE


@pytest.fixture
async def parallel_log(engine, tmp_path):
    learner = ParallelActiveLearner(engine, run_name="plot")
    values = iter([0.9, 0.8, 0.3, 0.2, 0.05, 0.04, 0.001, 0.002])

    @learner.simulation_task(as_executable=False)
    async def sim(*a, **k):
        return {"n_labeled": 5}

    @learner.training_task(as_executable=False)
    async def train(*a, **k):
        return {"train_mse": 0.5, "note": "text is not plotted"}

    @learner.active_learn_task(as_executable=False)
    async def al(*a, **k):
        return {}

    @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.01, as_executable=False)
    async def crit(*a, **k):
        return next(values, 0.001)

    tracker = FileTracker(tmp_path)
    learner.add_tracker(tracker)
    async for _ in learner.start(parallel_learners=3, max_iter=6):
        pass
    return tracker.path


def test_history_of_a_parallel_run(parallel_log):
    runs = history.load([parallel_log, parallel_log])  # the same events twice count once
    (h,) = runs.values()
    assert h.learner_type == "ParallelActiveLearner" and h.threshold == 0.01
    assert sorted(h.learners) == [0, 1, 2]
    assert h.reason in ("criterion_met", "max_iter_reached")
    assert h.iterations == sum(len(s.iterations) for s in h.learners.values())
    assert set(h.learners[0].keys) == {"n_labeled", "train_mse"}
    assert all(v is not None for v in h.final_metrics().values())


def test_rose_plot_writes_one_curve_per_learner(parallel_log, tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["plot", str(parallel_log), "-o", str(out), "--keys", "train_mse,n_labeled"]) == 0
    assert "1 run(s), 3 curve(s)" in capsys.readouterr().out
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[0] > 600 and image.shape[1] > 600  # three panels were drawn


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "nope.jsonl", "-o", "x.png"], "no such log file: nope.jsonl"),
        (["plot", "{log}", "-o", "x.pdf"], "output must be a .png file, got 'x.pdf'"),
        (
            ["plot", "{log}", "-o", "x.png", "--keys", "train_mse,nope"],
            "no iteration in the logs has a numeric state key 'nope'; "
            "the logs hold: n_labeled, train_mse",
        ),
    ],
)
def test_rose_plot_user_errors_are_one_line(parallel_log, tmp_path, argv, message):
    argv = [a.replace("{log}", str(parallel_log)) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"rose plot: error: {message}"


def test_rose_plot_takes_a_directory_of_logs(parallel_log, tmp_path, capsys):
    out = tmp_path / "dir.png"
    assert main(["plot", str(parallel_log.parent), "-o", str(out)]) == 0
    assert "1 run(s), 3 curve(s)" in capsys.readouterr().out and out.is_file()


def test_the_figure_names_the_run_and_its_outcome_and_a_live_run_says_so(parallel_log):
    from rose.plot import figure_title

    runs = history.load([parallel_log])
    (h,) = runs.values()
    reason = h.reason.replace("_", " ")
    assert figure_title(runs) == (
        f"plot: ParallelActiveLearner, {reason} (3 learners, {h.iterations} iterations in all)"
    )
    h.reason = None  # as the log of a run that has not stopped yet reads
    assert figure_title(runs) == (
        f"plot: ParallelActiveLearner, still running (3 learners, {h.iterations} iterations "
        "in all so far)"
    )
