"""Active learners on a real WorkflowEngine: loop, state, config, lifecycle, stop reasons."""

from __future__ import annotations

import itertools

import pytest

from rose import LearnerConfig, TaskConfig
from rose.al import ParallelActiveLearner, SequentialActiveLearner
from rose.metrics import MEAN_SQUARED_ERROR_MSE, MODEL_ACCURACY
from tests.conftest import Recorder, wait_for_stop


def build(engine, cls=SequentialActiveLearner, mse=None, criterion=True, **kw):
    """A learner whose criterion reports mse[0], mse[1], ... (then the last value)."""
    learner = cls(engine, **kw)
    values = iter(mse or [0.5, 0.25, 0.125, 0.0625, 0.03, 0.02, 0.01, 0.005])
    last = {"v": None}
    calls = {"sim": 0}

    @learner.simulation_task(as_executable=False)
    async def simulation(*args, **kwargs):
        calls["sim"] += 1
        return {"n_labeled": 10 * calls["sim"]}

    @learner.training_task(as_executable=False, log_params={"kernel": "rbf"})
    async def training(*args, **kwargs):
        return {"train_mse": 1.0, "train_args": len(args), "lr": kwargs.get("lr")}

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*args, **kwargs):
        return {"picked": 5}

    if criterion:

        @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.011, as_executable=False)
        async def check_mse(*args, **kwargs):
            last["v"] = next(values, last["v"])
            return last["v"]

    learner.calls = calls
    return learner


async def test_sequential_runs_to_criterion(engine, recorder):
    learner = build(engine)
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(max_iter=20)]
    assert [s.iteration for s in states] == list(range(7))
    assert [s.metric_value for s in states] == [0.5, 0.25, 0.125, 0.0625, 0.03, 0.02, 0.01]
    assert states[-1].should_stop and not any(s.should_stop for s in states[:-1])
    assert states[-1].metric_history == [s.metric_value for s in states]
    assert recorder.kinds() == ["start"] + ["iteration"] * 7 + ["stop"]
    assert recorder.stop_reason == "criterion_met"
    # Task dict results land in state; training got the simulation result as its dependency.
    assert states[0].n_labeled == 10 and states[0].train_args == 1 and states[0].picked == 5
    assert states[0].metric_name == MEAN_SQUARED_ERROR_MSE
    assert states[0].metric_threshold == 0.011


async def test_max_iter_reached_and_no_wasted_tasks(engine, recorder):
    learner = build(engine)
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(max_iter=3)]
    assert [s.iteration for s in states] == [0, 1, 2]
    assert recorder.stop_reason == "max_iter_reached"
    # pre-loop + one per later iteration; nothing submitted after the last iteration
    assert learner.calls["sim"] == 3
    stop = recorder.calls[-1][2]
    assert stop["final_state"]["iteration"] == 2


async def test_seed_loop_break_on_metric(engine, recorder):
    learner = build(engine, criterion=True)
    learner.add_tracker(recorder)
    async for state in learner.start(max_iter=20):
        if state.metric_value and state.metric_value < 0.1:
            break
    await wait_for_stop(recorder)
    assert recorder.stop_reason == "stopped"
    assert recorder.calls[-1][2]["final_state"]["metric_value"] == 0.0625


async def test_seq_and_run_are_shared_and_gapless(engine):
    learner = build(engine, run_name="gp surrogate/v1")
    a, b = Recorder(), Recorder()
    learner.add_tracker(a)
    learner.add_tracker(b)
    async for _ in learner.start(max_iter=3):
        pass
    assert a.calls == b.calls  # same run id, seq and ts for every tracker
    runs = {c[1][0] for c in a.calls}
    assert runs == {learner.run_id}
    assert learner.run_id.startswith("gp-surrogate-v1-")
    assert [c[1][1] for c in a.calls] == [0, 1, 2, 3, 4]


async def test_skip_pre_loop_and_skip_simulation(engine):
    learner = build(engine)
    states = [s async for s in learner.start(max_iter=2, skip_pre_loop=True)]
    # no pre-loop: iteration 0 has no simulation/training output yet
    assert "n_labeled" not in states[0].state and states[1].n_labeled == 10

    learner2 = build(engine)
    states = [s async for s in learner2.start(max_iter=2, skip_simulation_step=True)]
    assert learner2.calls["sim"] == 0
    assert states[0].train_args == 0


async def test_task_config_schedule_and_set_next_config(engine):
    learner = build(engine)
    config = LearnerConfig(
        training={
            0: TaskConfig(kwargs={"lr": 0.1}),
            2: TaskConfig(kwargs={"lr": 0.01}),
            -1: TaskConfig(kwargs={"lr": 0.05}),
        }
    )
    lrs, configs = [], []
    async for state in learner.start(max_iter=5, initial_config=config):
        lrs.append(state.lr)
        configs.append(state.current_config)
        if state.iteration == 2:
            learner.set_next_config(LearnerConfig(training=TaskConfig(kwargs={"lr": 0.5})))
    # pre-loop trains with iteration 0's entry; 1 has none, so -1 holds; 2 is exact;
    # the override from 3 on
    assert lrs == [0.1, 0.05, 0.01, 0.5, 0.5]
    assert configs[0] is config and configs[2] is config
    assert configs[4] == LearnerConfig(training=TaskConfig(kwargs={"lr": 0.5}))


async def test_executable_tasks_and_numeric_stdout_criterion(engine, recorder):
    learner = SequentialActiveLearner(engine)

    @learner.simulation_task
    async def simulation(*args, **kwargs):
        return "echo simulated"

    @learner.training_task()
    async def training(*args, **kwargs):
        return (
            """python3 -c 'import json; print("fitting"); print(json.dumps({"val_loss": 0.25}))'"""
        )

    @learner.active_learn_task
    async def active_learn(*args, **kwargs):
        return "echo picked"

    @learner.as_stop_criterion(metric_name="val_loss", threshold=0.3, operator="<")
    async def check(*args, **kwargs):
        return "echo 0.25"

    learner.add_tracker(recorder)
    states = [s async for s in learner.start(max_iter=3)]
    assert len(states) == 1 and states[0].metric_value == 0.25 and states[0].val_loss == 0.25
    assert recorder.stop_reason == "criterion_met"
    manifest = recorder.calls[0][2]
    assert manifest["tasks"]["simulation"]["as_executable"] is True
    assert manifest["criterion"]["operator"] == "<"


async def test_criterion_output_that_is_not_a_number(engine, recorder):
    learner = build(engine, criterion=False)

    @learner.as_stop_criterion(MODEL_ACCURACY, threshold=0.9, as_executable=False)
    async def check(*args, **kwargs):
        return "not a number"

    learner.add_tracker(recorder)
    with pytest.raises(ValueError, match="must produce a number"):
        async for _ in learner.start(max_iter=3):
            pass
    assert recorder.stop_reason == "error"


def test_custom_metric_needs_operator(engine):
    learner = SequentialActiveLearner(engine)
    with pytest.raises(ValueError, match="needs an operator"):
        learner.as_stop_criterion("my_metric", threshold=1.0)
    # a known metric carries its own operator
    learner.as_stop_criterion(MODEL_ACCURACY, threshold=0.9)(lambda: 1.0)
    assert learner.build_manifest().criterion.operator == ">="


async def test_parallel_streams_states_with_learner_id(engine, recorder):
    learner = build(engine, ParallelActiveLearner, criterion=False)
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(parallel_learners=3, max_iter=4)]
    assert sorted((s.learner_id, s.iteration) for s in states) == sorted(
        itertools.product(range(3), range(4))
    )
    assert recorder.stop_reason == "max_iter_reached"
    final = recorder.calls[-1][2]["final_state"]
    assert final is not None and final["iteration"] == 3  # a real last state, not None
    assert learner.build_manifest().parallel_count == 3


async def test_parallel_criterion(engine):
    learner = build(engine, ParallelActiveLearner, mse=[0.5, 0.001])
    rec = Recorder()
    learner.add_tracker(rec)
    states = [s async for s in learner.start(parallel_learners=2, max_iter=0)]
    assert rec.stop_reason == "criterion_met"
    assert {s.learner_id for s in states if s.should_stop} == {0, 1}


async def test_parallel_validation(engine, recorder):
    learner = build(engine, ParallelActiveLearner)
    learner.add_tracker(recorder)
    with pytest.raises(ValueError, match="at least 2"):
        async for _ in learner.start(parallel_learners=1, max_iter=2):
            pass
    with pytest.raises(ValueError, match="learner_configs has 1 entries"):
        async for _ in learner.start(parallel_learners=2, max_iter=2, learner_configs=[None]):
            pass


async def test_teach_is_a_deprecated_wrapper(engine):
    learner = build(engine)
    with pytest.warns(DeprecationWarning):
        final = await learner.teach(max_iter=2)
    assert final.iteration == 1


def test_add_tracker_before_tasks_warns(engine, recorder):
    learner = SequentialActiveLearner(engine)
    with pytest.warns(UserWarning, match="before any task is registered"):
        learner.add_tracker(recorder)
    assert recorder.calls[0][2]["tasks"] == {}


async def test_decor_kwargs_reach_backend_not_trackers(engine, recorder, tmp_path):
    from rose.integrations.file_tracker import FileTracker

    secret = "xoxb-SECRET-token-123"
    learner = build(engine)

    @learner.training_task(
        as_executable=False, auth_token=secret, num_gpus=4, log_params={"num_gpus": 4}
    )
    async def training(*args, **kwargs):
        return {"train_mse": 0.5}

    log = tmp_path / "run.jsonl"
    learner.add_tracker(recorder)
    learner.add_tracker(FileTracker(log))
    async for _ in learner.start(max_iter=2):
        pass
    assert secret not in log.read_text()
    assert secret not in repr(recorder.calls)
    assert recorder.calls[0][2]["tasks"]["training"]["log_params"] == {"num_gpus": 4}
    described = [
        c["description"]["task_backend_specific_kwargs"]
        for c in engine.components.values()
        if c["description"]["name"] == "training"
    ]
    assert described and all(d == {"auth_token": secret, "num_gpus": 4} for d in described)


def test_iteration_state_access():
    from rose import IterationState

    s = IterationState(iteration=2, metric_value=0.5, learner_id=1, state={"train_loss": 0.1})
    assert s.train_loss == 0.1 and s.get("nope", 3) == 3
    # A key no task returned reads as None, so `if s.val_loss and s.val_loss < x` needs no guard.
    assert s.val_loss is None
    with pytest.raises(AttributeError):
        _ = s._private  # private names stay errors (copy, pickle and protocol probes)
    d = s.to_dict()
    assert d["iteration"] == 2 and d["train_loss"] == 0.1 and d["learner_id"] == 1
    assert "state" not in d and "current_config" not in d


async def test_utility_and_prediction_tasks_listed_and_callable(engine):
    learner = build(engine)

    @learner.utility_task(as_executable=False)
    async def summarize(x):
        return {"sum": x + 1}

    @learner.prediction_task(as_executable=False)
    async def predict(*a):
        return {}

    assert await summarize(41) == {"sum": 42}  # the decorator returns a task you can run
    tasks = learner.build_manifest().tasks
    assert list(tasks) == ["simulation", "training", "active_learn", "prediction", "utility.summarize"]


async def test_learner_shutdown_stops_its_engine(tmp_path):
    from rose.execution import engine

    async with engine(work_dir=tmp_path) as eng:
        learner = build(eng)
        states = [s async for s in learner.start(max_iter=1)]
        await learner.shutdown()  # how existing ROSE scripts end
        assert len(states) == 1 and eng._shutdown_event.is_set()
