"""What every learner family tells its trackers when a run ends early (a break, a stop(),
a task that raises, a start that is refused) and when a tracker raises.  Each family's
builder lives in its own tests."""

from __future__ import annotations

import logging

import pytest

from rose.al import ParallelActiveLearner, SequentialActiveLearner
from rose.rl import ParallelReinforcementLearner, SequentialReinforcementLearner
from rose.uq import ParallelUQLearner, SeqUQLearner
from tests import test_learner, test_rl, test_uq
from tests.conftest import Exploding, Recorder, wait_for_stop


def _al_sims(learner) -> int:
    return learner.calls["sim"]


def _rl_sims(learner) -> int:
    return learner.seen["env"]


def _uq_sims(learner) -> int:
    return len(learner.calls["sim"])


#: family -> (its builder, start()'s positional arguments, how many simulations ran)
FAMILIES = {
    "al": (test_learner.build, (), _al_sims),
    "rl": (test_rl.build, (), _rl_sims),
    "uq": (test_uq.build, (["a"],), _uq_sims),
}
family = pytest.mark.parametrize("name", list(FAMILIES))


@family
async def test_user_break_reports_stopped_with_last_state(engine, recorder, name):
    build, args, _ = FAMILIES[name]
    learner = build(engine)
    learner.add_tracker(recorder)
    async for state in learner.start(*args, max_iter=20):
        if state.iteration == 1:
            break
    await wait_for_stop(recorder)
    assert recorder.stop_reason == "stopped"
    assert recorder.calls[-1][2]["final_state"]["iteration"] == 1
    assert recorder.kinds().count("iteration") == 2


@pytest.mark.parametrize(
    "name, kwargs", [("al", {}), ("rl", {"criterion": False}), ("uq", {})], ids=list(FAMILIES)
)
async def test_stop_called_in_loop_body(engine, recorder, name, kwargs):
    build, args, sims = FAMILIES[name]
    learner = build(engine, **kwargs)
    learner.add_tracker(recorder)
    seen = []
    async for state in learner.start(*args, max_iter=20):
        seen.append(state.iteration)
        if state.iteration == 2:
            learner.stop()
    assert seen == [0, 1, 2]
    assert recorder.stop_reason == "stopped"
    assert sims(learner) == 3  # nothing ran after the stop


@pytest.mark.parametrize(
    "name, task, message, args, max_iter",
    [
        ("al", "active_learn_task", "sampler exploded", (), 5),
        ("rl", "update_task", "policy diverged", (), 5),
        ("uq", "prediction_task", "model file missing", (["a", "b"],), 3),
    ],
    ids=list(FAMILIES),
)
async def test_task_error_reports_error_and_raises(
    engine, recorder, name, task, message, args, max_iter
):
    learner = FAMILIES[name][0](engine)

    async def broken(*args, **kwargs):
        raise RuntimeError(message)

    broken.__name__ = task.removesuffix("_task")  # as the family's own tests name it
    getattr(learner, task)(as_executable=False)(broken)
    learner.add_tracker(recorder)
    with pytest.raises(RuntimeError, match=message):
        async for _ in learner.start(*args, max_iter=max_iter):
            pass
    assert recorder.stop_reason == "error"
    assert recorder.calls[-1][2]["final_state"] is None


@pytest.mark.parametrize(
    "name, kwargs",
    [("al", {}), ("rl", {}), ("uq", {"uncertainty": False})],
    ids=list(FAMILIES),
)
async def test_invalid_start_reports_error_to_trackers(engine, recorder, name, kwargs):
    build, args, _ = FAMILIES[name]
    learner = build(engine, criterion=False, **kwargs)
    learner.add_tracker(recorder)
    with pytest.raises(ValueError, match="max_iter=0"):
        async for _ in learner.start(*args):
            pass
    assert recorder.kinds() == ["start", "stop"]
    assert recorder.stop_reason == "error"


@pytest.mark.parametrize(
    "build, cls, task, exc, args, kwargs",
    [
        (test_learner.build, ParallelActiveLearner, "training_task", ValueError("diverged"),
         (), {"parallel_learners": 2}),
        (test_rl.build, ParallelReinforcementLearner, "environment_task",
         ValueError("simulator crashed"), (), {"parallel_learners": 2}),
        (test_uq.build, ParallelUQLearner, "simulation_task", OSError("scratch full"),
         (["A", "B"],), {}),
    ],
    ids=list(FAMILIES),
)  # fmt: skip
async def test_parallel_task_error_reports_error_and_raises(
    engine, build, cls, task, exc, args, kwargs
):
    learner = build(engine, cls, **({} if cls is ParallelUQLearner else {"criterion": False}))

    async def broken(*a, **k):
        raise exc

    broken.__name__ = task.removesuffix("_task")  # as the family's own tests name it
    getattr(learner, task)(as_executable=False)(broken)
    rec = Recorder()
    learner.add_tracker(rec)
    with pytest.raises(type(exc), match=str(exc)):
        async for _ in learner.start(*args, **kwargs, max_iter=3):
            pass
    assert rec.stop_reason == "error"


@pytest.mark.parametrize(
    "make, start, per_run",
    [
        (lambda e: test_learner.build(e, SequentialActiveLearner, criterion=False), (), 3),
        (lambda e: test_learner.build(e, ParallelActiveLearner, criterion=False), (), 6),
        (lambda e: test_rl.build(e, SequentialReinforcementLearner, criterion=False), (), 3),
        (lambda e: test_rl.build(e, ParallelReinforcementLearner, criterion=False), (), 6),
        (lambda e: test_rl.build_pe(e, criterion=False), (), 3),
        (lambda e: test_uq.build(e, SeqUQLearner, criterion=False),
         (["a", "b"],), 3),
        (lambda e: test_uq.build(e, ParallelUQLearner, criterion=False),
         (["A", "B"], ["a", "b"]), 6),
    ],
    ids=["al-sequential", "al-parallel", "rl-sequential", "rl-parallel",
         "rl-parallel-experience", "uq-sequential", "uq-parallel"],
)  # fmt: skip
async def test_tracker_failures_are_isolated_and_logged_once(engine, caplog, make, start, per_run):
    learner = make(engine)
    good = Recorder()
    with caplog.at_level(logging.ERROR, logger="rose.learner"):
        learner.add_tracker(Exploding())  # on_start raising must not escape add_tracker
        learner.add_tracker(good)
        states = [s async for s in learner.start(*start, max_iter=3)]
    assert len(states) == per_run
    assert good.kinds() == ["start"] + ["iteration"] * per_run + ["stop"]
    assert good.stop_reason == "max_iter_reached"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert sorted(str(r.exc_info[1]) for r in errors) == [
        "iteration boom",
        "start boom",
        "stop boom",
    ]
    assert all(r.exc_info for r in errors)


@pytest.mark.parametrize(
    "build, cls, kwargs, args, start, lanes",
    [
        (test_learner.build, ParallelActiveLearner, {"criterion": False},
         (), {"parallel_learners": 2}, {0, 1}),
        (test_rl.build, ParallelReinforcementLearner, {"criterion": False},
         (), {"parallel_learners": 2}, {0, 1}),
        (test_uq.build, ParallelUQLearner, {}, (["A", "B"],), {}, {"A", "B"}),
    ],
    ids=list(FAMILIES),
)  # fmt: skip
async def test_parallel_break_reports_stopped_with_last_state(
    engine, build, cls, kwargs, args, start, lanes
):
    learner = build(engine, cls, **kwargs)
    rec = Recorder()
    learner.add_tracker(rec)
    async for state in learner.start(*args, **start, max_iter=50):
        if state.iteration == 1:
            break
    await wait_for_stop(rec)
    assert rec.stop_reason == "stopped"
    final = rec.calls[-1][2]["final_state"]
    assert final["iteration"] == 1 and final["learner_id"] in lanes


@pytest.mark.parametrize(
    "cls, task, name, result, missing, args",
    [
        (SequentialActiveLearner, "training_task", "training", {},
         r"simulation_task.*active_learn_task", ()),
        (SequentialReinforcementLearner, "environment_task", "env", None, "update_task", ()),
        (SeqUQLearner, "training_task", "training", {}, "prediction_task", (["a"],)),
    ],
    ids=list(FAMILIES),
)  # fmt: skip
async def test_missing_tasks_named_in_error(engine, cls, task, name, result, missing, args):
    bare = cls(engine)

    async def only(*a, **k):
        return result

    only.__name__ = name
    getattr(bare, task)(as_executable=False)(only)
    with pytest.raises(ValueError, match=missing):
        async for _ in bare.start(*args, max_iter=1):
            pass
