"""ClearMLTracker in the learner's process, against real ClearML in offline mode."""

from __future__ import annotations

import os

import pytest

from rose.al import ParallelActiveLearner, SequentialActiveLearner
from rose.integrations.clearml_mapping import INHERITED_ENV
from rose.integrations.clearml_tracker import ClearMLTracker
from tests.clearml.conftest import normalized, sessions
from tests.clearml.pipelines import register


async def test_sequential_run_is_one_task(engine, clearml_cache):
    learner = register(SequentialActiveLearner(engine))
    tracker = ClearMLTracker(project_name="ROSE-test", task_name="seq-01")
    learner.add_tracker(tracker)
    states = [s async for s in learner.start(max_iter=10)]

    (session,) = sessions(clearml_cache)
    got = normalized(session)
    assert got["name"] == "seq-01" and got["project"] == "ROSE-test"
    params = got["params"]
    assert params["General/learner_type"][0] == "SequentialActiveLearner"
    assert params["General/task/training/kernel"][0] == "rbf"
    assert params["General/task/training/opt/lr"] == ("0.1", "float")  # ClearML flattens maps
    assert params["General/criterion/metric_name"][0] == "mean_squared_error_mse"
    assert params["General/criterion/threshold"] == ("0.01", "float")
    assert not any("num_gpus" in k for k in params), "decor_kwargs must never reach ClearML"
    assert params["rose/run"][0] == learner.run_id
    assert params["rose/stop_reason"][0] == "criterion_met"
    assert params["rose/final_iteration"][0] == "3"
    assert not any("kernel_used" in k for k in params), "string state values are not logged"
    assert sorted(got["tags"]) == ["final_iter:3", "rose", "stop:criterion_met"]
    n = len(states)
    assert n == 4
    scalars = got["scalars"]
    mse = [(it, v) for (t, s, it, v) in scalars if t == "mean_squared_error_mse"]
    assert mse == [(0, 0.5), (1, 0.2), (2, 0.05), (3, 0.009)]
    titles = {(t, s) for (t, s, _, _) in scalars}
    # series "value" for a sequential run; bools are 0/1; nested maps are not numbers
    assert titles == {
        ("mean_squared_error_mse", "value"),
        ("n_samples", "value"),
        ("train_loss", "value"),
        ("ok", "value"),
        ("n_labeled", "value"),
    }
    assert len(scalars) == 5 * n, "each scalar exactly once per iteration"


async def test_parallel_learners_are_series_named_by_learner_names(engine, clearml_cache):
    learner = register(ParallelActiveLearner(engine), mse=(0.5,))
    learner.add_tracker(ClearMLTracker("ROSE-test", "par-01", learner_names=["A", "B"]))
    async for _ in learner.start(parallel_learners=2, max_iter=3):
        pass
    (session,) = sessions(clearml_cache)
    got = normalized(session)
    series = {s for (t, s, _, _) in got["scalars"] if t == "train_loss"}
    assert series == {"A", "B"}
    per = {
        s: sorted(it for (t, ss, it, _) in got["scalars"] if t == "train_loss" and ss == s)
        for s in series
    }
    assert per == {"A": [0, 1, 2], "B": [0, 1, 2]}
    assert "stop:max_iter_reached" in got["tags"]
    # The last state is one learner's: where the run ended is in section rose, not a tag.
    assert not any(t.startswith("final_iter") for t in got["tags"])
    assert got["params"]["rose/final_iteration"][0] == "2"
    assert got["params"]["rose/final_learner"][0] in {"0", "1"}


async def test_failure_is_tagged_and_commented(engine, clearml_cache):
    learner = register(SequentialActiveLearner(engine), mse=(0.5,), fail_at=2)
    learner.add_tracker(ClearMLTracker("ROSE-test", "fails"))
    with pytest.raises(Exception, match="diverged"):
        async for _ in learner.start(max_iter=10):
            pass
    (session,) = sessions(clearml_cache)
    got = normalized(session)
    assert sorted(got["tags"]) == ["final_iter:1", "rose", "stop:error"]
    assert "failed at iteration 1" in got["comment"]


async def test_two_runs_in_turn_make_two_tasks(engine, clearml_cache):
    for name in ("first", "second"):
        learner = register(SequentialActiveLearner(engine), mse=(0.5,))
        learner.add_tracker(ClearMLTracker("ROSE-test", name))
        async for _ in learner.start(max_iter=2):
            pass
    names = sorted(s["task"]["name"] for s in sessions(clearml_cache))
    assert names == ["first", "second"]
    # ClearML's "<pid>:" marker is gone again: a child process would get a stub task.
    assert not any(k in os.environ for k in INHERITED_ENV)
    runs = {s["task"]["hyperparams"]["rose"]["run"]["value"] for s in sessions(clearml_cache)}
    assert len(runs) == 2


def test_bad_arguments_say_what_to_fix():
    with pytest.raises(ValueError, match="project_name"):
        ClearMLTracker("", "x")


def test_without_clearml_the_constructor_names_the_install_command(monkeypatch):
    import sys

    from rose.extras import install_hint

    monkeypatch.setitem(sys.modules, "clearml", None)  # import clearml now raises ImportError
    with pytest.raises(ImportError) as err:
        ClearMLTracker("ROSE-test", "x")
    assert install_hint("clearml") in str(err.value) and "ClearMLTracker" in str(err.value)
