"""Reinforcement learners on a real WorkflowEngine: loop and data flow, every start()
signature, stop reasons, learner_id stamping, manifests, experience merging, tracker isolation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rose import LearnerConfig, TaskConfig
from rose.metrics import REWARD
from rose.rl import (
    ExperienceBank,
    ParallelExperience,
    ParallelReinforcementLearner,
    SequentialReinforcementLearner,
    merge_banks,
)
from tests.conftest import Recorder, wait_for_stop


def build(engine, cls=SequentialReinforcementLearner, rewards=None, criterion=True, **kw):
    """An RL learner whose test task reports rewards[0], rewards[1], ... per learner.

    A learner's own counter is picked by the criterion's ``lane`` kwarg (set
    through learner_configs); without it all learners share one counter.
    """
    learner = cls(engine, **kw)
    rewards = rewards or [0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99]
    seen: dict = {"env": 0, "update": 0, "update_args": [], "crit_args": [], "env_kwargs": []}
    counters: dict = {}

    @learner.environment_task(as_executable=False)
    async def environment(*args, **kwargs):
        seen["env"] += 1
        seen["env_kwargs"].append(dict(kwargs))
        return {"episode_return": float(seen["env"]), "epsilon": kwargs.get("epsilon")}

    @learner.update_task(as_executable=False, log_params={"algo": "q-learning"})
    async def update(*args, **kwargs):
        seen["update"] += 1
        seen["update_args"].append(args)
        return {"loss": 1.0 / seen["update"], "policy_version": seen["update"]}

    if criterion:

        @learner.as_stop_criterion(REWARD, threshold=0.9, as_executable=False)
        async def test_policy(*args, **kwargs):
            seen["crit_args"].append(args)
            n = counters[kwargs.get("lane")] = counters.get(kwargs.get("lane"), -1) + 1
            return {REWARD: rewards[min(n, len(rewards) - 1)], "eval_episodes": 3}

    learner.seen = seen
    return learner


def lane_configs(n: int) -> list[LearnerConfig]:
    return [
        LearnerConfig(
            environment=TaskConfig(kwargs={"epsilon": 0.1 * (i + 1)}),
            criterion=TaskConfig(kwargs={"lane": i}),
        )
        for i in range(n)
    ]


# ---------------------------------------------------------------- sequential


async def test_sequential_runs_to_criterion_with_data_flow(engine, recorder):
    learner = build(engine)
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(max_iter=20)]
    assert [s.iteration for s in states] == list(range(5))
    assert [s.metric_value for s in states] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert states[-1].should_stop and not any(s.should_stop for s in states[:-1])
    assert states[-1].metric_history == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert recorder.kinds() == ["start"] + ["iteration"] * 5 + ["stop"]
    assert recorder.stop_reason == "criterion_met"
    final = recorder.calls[-1][2]["final_state"]
    assert final["iteration"] == 4 and final["metric_value"] == 0.9
    # environment and update dicts, and the criterion's dict, land in state
    assert states[0].episode_return == 1.0 and states[0].policy_version == 1
    assert states[0].eval_episodes == 3 and states[0].metric_name == REWARD
    # the update got the environment's result; the test got the update's result
    assert learner.seen["update_args"][0] == ({"episode_return": 1.0, "epsilon": None},)
    assert learner.seen["crit_args"][0] == ({"loss": 1.0, "policy_version": 1},)


async def test_max_iter_reached_without_wasted_steps(engine, recorder):
    learner = build(engine, criterion=False)
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(max_iter=3)]
    assert [s.iteration for s in states] == [0, 1, 2]
    assert all(s.metric_value is None for s in states)
    assert recorder.stop_reason == "max_iter_reached"
    assert learner.seen["env"] == 3 and learner.seen["update"] == 3


async def test_start_signature_skip_flags_and_config(engine):
    learner = build(engine, criterion=False)
    config = LearnerConfig(
        environment={-1: TaskConfig(kwargs={"epsilon": 0.5}), 2: TaskConfig(kwargs={"epsilon": 0.1})}
    )
    states = [s async for s in learner.start(3, False, False, config)]
    assert [s.epsilon for s in states] == [0.5, 0.5, 0.1]
    assert states[2].current_config is config

    # no pre-loop: iteration 0 tests an untouched policy, so it has no step output yet
    learner = build(engine)
    states = [s async for s in learner.start(max_iter=2, skip_pre_loop=True, initial_config=None)]
    assert "episode_return" not in states[0].state and states[1].episode_return == 1.0
    assert learner.seen["crit_args"][0] == ()

    # update only, from an existing experience pool
    learner = build(engine, criterion=False)
    states = [s async for s in learner.start(max_iter=2, skip_environment_step=True)]
    assert learner.seen["env"] == 0 and learner.seen["update"] == 2
    assert learner.seen["update_args"][0] == ()


async def test_executable_tasks(engine, recorder):
    learner = SequentialReinforcementLearner(engine)

    @learner.environment_task
    async def environment(*args, **kwargs):
        return """echo '{"episode_return": 12.5}'"""

    @learner.update_task()
    async def update(*args, **kwargs):
        return "echo updated"

    @learner.as_stop_criterion(REWARD, threshold=0.5)
    async def test_policy(*args, **kwargs):
        return "echo 0.75"

    learner.add_tracker(recorder)
    states = [s async for s in learner.start(max_iter=3)]
    assert len(states) == 1 and states[0].metric_value == 0.75
    assert states[0].episode_return == 12.5
    assert recorder.stop_reason == "criterion_met"


async def test_teach_and_learn_are_deprecated_wrappers(engine):
    with pytest.warns(DeprecationWarning):
        final = await build(engine).teach(max_iter=2)
    assert final.iteration == 1
    with pytest.warns(DeprecationWarning):
        final = await build(engine).learn(max_iter=3, skip_emulation_step=True)
    assert final.iteration == 2
    with pytest.warns(DeprecationWarning):
        finals = await build(engine, ParallelReinforcementLearner, criterion=False).teach(2, 2)
    assert [f.iteration for f in finals] == [1, 1]


# ---------------------------------------------------------------- parallel


async def test_parallel_stamps_int_learner_ids_and_configs(engine, recorder):
    learner = build(engine, ParallelReinforcementLearner, criterion=False)
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(3, 4, False, lane_configs(3))]
    assert sorted((s.learner_id, s.iteration) for s in states) == sorted(
        itertools.product(range(3), range(4))
    )
    assert all(isinstance(s.learner_id, int) for s in states)
    iteration_ids = {c[2]["learner_id"] for c in recorder.calls if c[0] == "iteration"}
    assert iteration_ids == {0, 1, 2}
    # each learner's environment ran with its own configuration
    assert {s.learner_id: s.epsilon for s in states} == pytest.approx({0: 0.1, 1: 0.2, 2: 0.3})
    assert recorder.stop_reason == "max_iter_reached"
    final = recorder.calls[-1][2]["final_state"]
    assert final is not None and final["iteration"] == 3
    assert learner.build_manifest().parallel_count == 3


async def test_parallel_default_count_and_criterion(engine, recorder):
    learner = build(engine, ParallelReinforcementLearner, rewards=[0.2, 0.95])
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(learner_configs=lane_configs(2))]
    assert {s.learner_id for s in states} == {0, 1}  # parallel_learners defaults to 2
    assert {s.learner_id for s in states if s.should_stop} == {0, 1}
    assert recorder.stop_reason == "criterion_met"


async def test_parallel_stop(engine):
    learner = build(engine, ParallelReinforcementLearner, criterion=False)
    rec = Recorder()
    learner.add_tracker(rec)
    async for state in learner.start(parallel_learners=2, max_iter=50):
        if state.iteration == 2:
            learner.stop()
    assert rec.stop_reason == "stopped"
    assert rec.calls[-1][2]["final_state"] is not None


async def test_parallel_validation_and_set_next_config(engine, recorder):
    learner = build(engine, ParallelReinforcementLearner, criterion=False)
    learner.add_tracker(recorder)
    with pytest.raises(ValueError, match="at least 2"):
        async for _ in learner.start(parallel_learners=1, max_iter=2):
            pass
    assert recorder.stop_reason == "error"
    with pytest.raises(ValueError, match="learner_configs has 1 entries"):
        async for _ in learner.start(parallel_learners=2, max_iter=2, learner_configs=[None]):
            pass

    learner = build(engine, ParallelReinforcementLearner, criterion=False)
    eps = {}
    async for state in learner.start(parallel_learners=2, max_iter=4):
        eps[(state.learner_id, state.iteration)] = state.epsilon
        if state.iteration == 1 and state.learner_id == 1:
            learner.set_next_config(
                LearnerConfig(environment=TaskConfig(kwargs={"epsilon": 0.01})), learner_id=1
            )
    assert eps[(1, 3)] == 0.01 and eps[(0, 3)] is None


# ---------------------------------------------------------------- parallel experience


def build_pe(engine, sizes=(3, 5), criterion=True):
    learner = ParallelExperience(engine)
    got: dict = {"banks": []}

    for name, size in zip(("explorer", "exploiter"), sizes, strict=True):

        def make(name=name, size=size):
            async def collect(*args, **kwargs):
                return ExperienceBank(
                    obs=np.arange(size), reward=np.full(size, kwargs.get("scale", 1.0))
                )

            collect.__name__ = f"collect_{name}"
            return collect

        learner.environment_task(name=name, as_executable=False)(make())

    @learner.update_task(as_executable=False)
    async def update(bank, **kwargs):
        got["banks"].append(bank)
        return {"n_transitions": len(bank), "mean_reward": float(bank["reward"].mean())}

    if criterion:

        @learner.as_stop_criterion(REWARD, threshold=0.9, as_executable=False)
        async def test_policy(*args, **kwargs):
            return 0.95 if len(got["banks"]) >= 3 else 0.1

    learner.got = got
    return learner


async def test_parallel_experience_merges_banks_into_one_update(engine, recorder):
    learner = build_pe(engine)
    learner.add_tracker(recorder)
    config = LearnerConfig(environment=TaskConfig(kwargs={"scale": 2.0}))
    states = [s async for s in learner.start(max_iter=10, initial_config=config)]
    assert len(states) == 3 and recorder.stop_reason == "criterion_met"
    bank = learner.got["banks"][0]
    assert len(bank) == 8 and list(bank["obs"]) == [0, 1, 2, 0, 1, 2, 3, 4]
    assert states[0].experience_size == 8
    assert states[0].experience_sizes == {"explorer": 3, "exploiter": 5}
    assert states[0].n_transitions == 8 and states[0].mean_reward == 2.0
    assert states[0].current_config is config
    # banks are data for the update, never state
    assert not any(isinstance(v, ExperienceBank) for v in states[0].state.values())
    manifest = recorder.calls[0][2]
    assert list(manifest["tasks"]) == ["environment.explorer", "environment.exploiter", "update"]
    assert manifest["tasks"]["environment.explorer"]["func_name"] == "collect_explorer"
    assert manifest["criterion"]["metric_name"] == REWARD


async def test_parallel_experience_stop_reasons(engine):
    learner = build_pe(engine, criterion=False)
    rec = Recorder()
    learner.add_tracker(rec)
    states = [s async for s in learner.start(max_iter=2)]
    assert len(states) == 2 and rec.stop_reason == "max_iter_reached"

    learner = build_pe(engine, criterion=False)
    rec = Recorder()
    learner.add_tracker(rec)
    async for state in learner.start(max_iter=20):
        if state.iteration == 1:
            break
    await wait_for_stop(rec)
    assert rec.stop_reason == "stopped"

    learner = build_pe(engine, criterion=False)
    rec = Recorder()
    learner.add_tracker(rec)
    seen = []
    async for state in learner.start(max_iter=20):
        seen.append(state.iteration)
        learner.stop()
    assert rec.stop_reason == "stopped" and seen == [0]

    # an environment returning something that is not experience is an error, said clearly
    learner = build_pe(engine, criterion=False)

    @learner.environment_task("broken", as_executable=False)
    async def broken(*args, **kwargs):
        return 42

    rec = Recorder()
    learner.add_tracker(rec)
    with pytest.raises(TypeError, match="environment 'broken' returned int"):
        async for _ in learner.start(max_iter=2):
            pass
    assert rec.stop_reason == "error"


async def test_parallel_experience_validation(engine):
    learner = ParallelExperience(engine)

    @learner.update_task(as_executable=False)
    async def update(*args, **kwargs):
        return None

    with pytest.raises(ValueError, match="at least one environment"):
        async for _ in learner.start(max_iter=1):
            pass

    @learner.environment_task  # bare: named after the function; an executable by default
    async def env_a(*args, **kwargs):
        return """echo '{"x": [1, 2]}'"""

    assert learner.environment_names == ["env_a"]
    with pytest.raises(ValueError, match="already registered"):
        learner.environment_task(name="env_a")(env_a)
    states = [s async for s in learner.start(max_iter=1)]
    assert states[0].experience_size == 2  # the JSON object of columns printed on stdout


def test_experience_banks(tmp_path):
    a = ExperienceBank({"obs": [[0, 0], [1, 1]], "reward": [1.0, 0.0]})
    b = ExperienceBank(obs=[[2, 2]], reward=[0.5])
    merged = merge_banks([a, None, b, ExperienceBank()])
    assert len(merged) == 3 and merged["obs"].shape == (3, 2)
    assert list(merged["reward"]) == [1.0, 0.0, 0.5]
    path = merged.save(tmp_path / "bank")  # a path that is no folder: that file, as .npz
    assert path == str(tmp_path / "bank.npz")
    again = ExperienceBank.load(path)
    assert np.array_equal(again["obs"], merged["obs"])
    with pytest.raises(ValueError, match="differ in length"):
        ExperienceBank(obs=[1, 2], reward=[1.0])
    with pytest.raises(ValueError, match="different columns"):
        merge_banks([a, ExperienceBank(obs=[[3, 3]])])


# ---------------------------------------------------------------- manifests and trackers


async def test_manifests_list_rl_tasks(engine, recorder):
    learner = build(engine, ParallelReinforcementLearner, parallel_learners=3)
    learner.add_tracker(recorder)
    m = recorder.calls[0][2]
    assert m["learner_type"] == "ParallelReinforcementLearner"
    assert list(m["tasks"]) == ["environment", "update"]
    assert m["tasks"]["update"] == {
        "func_name": "update",
        "func_module": __name__,
        "as_executable": False,
        "log_params": {"algo": "q-learning"},
    }
    assert m["criterion"]["metric_name"] == REWARD and m["criterion"]["operator"] == ">="
    assert m["parallel_count"] == 3
    seq = build(engine).build_manifest()
    assert seq.learner_type == "SequentialReinforcementLearner" and seq.parallel_count is None
