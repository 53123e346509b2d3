"""What ROSE 0.3 scripts rely on in rose.rl: Experience and the ExperienceBank API, file
banks merged by ParallelExperience, and the RL learners' signatures, on a real WorkflowEngine."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import rose.rl
from rose import LearnerConfig, TaskConfig
from rose.metrics import REWARD
from rose.rl import (
    ParallelExperience,
    ParallelReinforcementLearner,
    SequentialReinforcementLearner,
)
from rose.rl.experience import Experience, ExperienceBank, create_experience


def transitions(n: int, start: int = 0) -> list[Experience]:
    return [
        create_experience(
            np.array([i, i + 0.5]), i % 2, float(i), np.array([i + 1, 0.0]), i == n - 1
        )
        for i in range(start, start + n)
    ]


def test_rl_package_exports():
    assert rose.rl.Experience is Experience
    assert issubclass(SequentialReinforcementLearner, rose.rl.ReinforcementLearner)
    assert create_experience(1, 0, 1.0, 2, False).info == {}
    assert create_experience(1, 0, 1.0, 2, False, {"seed": 3}).info == {"seed": 3}


def test_bank_add_sample_recent_and_bound():
    bank = ExperienceBank(max_size=3, session_id="s1")
    assert bank.session_id == "s1" and len(bank) == 0 and bank.sample(4) == []
    bank.add(transitions(1)[0])
    bank.add_batch(transitions(4, start=1))
    assert len(bank) == 3  # the newest three stay
    assert [e.reward for e in bank] == [2.0, 3.0, 4.0]
    assert [e.reward for e in bank.get_recent(2)] == [3.0, 4.0]
    assert [e.reward for e in bank.get_recent(10)] == [2.0, 3.0, 4.0]
    assert bank[0].reward == 2.0 and [e.reward for e in bank[1:]] == [3.0, 4.0]
    assert list(bank["reward"]) == [2.0, 3.0, 4.0] and bank["state"].shape == (3, 2)
    drawn = bank.sample(10)  # with replacement by default
    assert len(drawn) == 10 and all(isinstance(e, Experience) for e in drawn)
    assert sorted(e.reward for e in bank.sample(3, replace=False)) == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="without replacement"):
        bank.sample(4, replace=False)
    with pytest.raises(TypeError, match="create_experience"):
        bank.add((1, 2, 3))
    bank.clear()
    assert len(bank) == 0
    assert ExperienceBank().session_id.startswith("experience_bank_")


def test_bank_merge_rules():
    small, big, free = ExperienceBank(2), ExperienceBank(5), ExperienceBank()
    small.add_batch(transitions(2))
    big.add_batch(transitions(3, start=10))
    merged = small.merge(big)
    assert merged.max_size == 5 and [e.reward for e in merged] == [0.0, 1.0, 10.0, 11.0, 12.0]
    assert len(small) == 2  # merge() leaves both banks alone
    assert free.merge(small).max_size == 2 and free.merge(free).max_size is None
    small.merge_inplace(big)
    assert [e.reward for e in small] == [11.0, 12.0]  # still bounded to 2


def test_bank_save_and_load(tmp_path):
    bank = ExperienceBank(session_id="run7")
    bank.add_batch(transitions(3))
    bank.add(create_experience(np.zeros(2), 1, -1.0, np.ones(2), True, {"note": "x"}))
    default = bank.save(str(tmp_path))
    assert default == str(tmp_path / "run7.pkl")
    named = bank.save(str(tmp_path), "experience_bank.pkl")
    again = ExperienceBank.load(named, max_size=2)
    assert again.max_size == 2 and len(again) == 2  # max_size bounds the loaded bank
    full = ExperienceBank.load(default)
    assert [e.reward for e in full] == [0.0, 1.0, 2.0, -1.0]
    assert np.array_equal(full[1].state, np.array([1, 1.5])) and full[3].info == {"note": "x"}
    assert full[3].done is True and isinstance(full[0].action, int)
    # a missing file is an empty bank, as in ROSE 0.3
    assert len(ExperienceBank.load(tmp_path / "nope.pkl", max_size=4)) == 0
    # a pickle (what ROSE 0.3 wrote) is only read when asked for
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps(transitions(2)))
    with pytest.raises(ValueError, match="allow_pickle=True"):
        ExperienceBank.load(legacy)
    assert len(ExperienceBank.load(legacy, allow_pickle=True)) == 2
    ragged = ExperienceBank()
    ragged.add_batch([create_experience([1], 0, 0.0, [1, 2], False)] * 2)
    ragged.add(create_experience([1, 2, 3], 0, 0.0, [1], False))
    with pytest.raises(TypeError, match="no pickle"):
        ragged.save(str(tmp_path), "ragged.pkl")


def build_seq(engine):
    learner = SequentialReinforcementLearner(engine)
    calls = {"env": 0, "update": 0}

    @learner.environment_task(as_executable=False)
    async def environment(*args, **kwargs):
        calls["env"] += 1
        return {"episodes": calls["env"]}

    @learner.update_task(as_executable=False)
    async def update(*args, **kwargs):
        calls["update"] += 1
        return {"updates": calls["update"]}

    learner.calls = calls
    return learner


async def test_learn_skip_simulation_step_and_current_state(engine):
    learner = build_seq(engine)
    assert learner.get_current_state() is None and learner.learner_id is None
    with pytest.warns(DeprecationWarning):
        final = await learner.learn(
            2, False, True
        )  # (max_iter, skip_pre_loop, skip_simulation_step)
    assert learner.calls == {"env": 0, "update": 2}
    assert final.iteration == 1 and learner.get_current_state() is final
    assert learner.get_max_iterations() == 2

    learner = build_seq(engine)
    with pytest.warns(DeprecationWarning):
        await learner.learn(max_iter=1, skip_simulation_step=False)
    assert learner.calls == {"env": 1, "update": 1}


async def test_parallel_rl_learn_returns_a_list(engine):
    learner = ParallelReinforcementLearner(engine)

    @learner.environment_task(as_executable=False)
    async def environment(*args, **kwargs):
        return {"episodes": 1}

    @learner.update_task(as_executable=False)
    async def update(*args, **kwargs):
        return {"updates": 1}

    with pytest.warns(DeprecationWarning):
        finals = await learner.learn(3, 2)
    assert [(s.learner_id, s.iteration) for s in finals] == [(0, 1), (1, 1), (2, 1)]


def build_file_pe(engine, work_dir, sizes=(3, 4)):
    """ROSE 0.3's ParallelExperience pattern: environments save banks into work_dir."""
    learner = ParallelExperience(engine)
    learner.work_dir = str(work_dir)
    seen: dict = {"update_sizes": [], "eps": []}

    for name, size in zip(("env_1", "env_2"), sizes, strict=True):

        def make(name=name, size=size):
            def collect(*args, **kwargs):
                seen["eps"].append(kwargs.get("epsilon"))
                bank = ExperienceBank(session_id=f"experience_bank_{name}")
                bank.add_batch(transitions(size))
                bank.save(str(work_dir))
                return f"Saved memory with {size} experiences"  # what an executable prints

            return collect

        learner.environment_task(name=name, as_executable=False)(make())

    @learner.update_task(as_executable=False)
    async def update(**kwargs):  # no argument: it reads the merged file, as in ROSE 0.3
        seen["update_sizes"].append(len(ExperienceBank.load(work_dir / "experience_bank.pkl")))
        return {"trained": True}

    @learner.as_stop_criterion(REWARD, threshold=0.5, as_executable=False)
    async def test_policy(*args, **kwargs):
        return 0.1

    learner.seen = seen
    return learner


async def test_parallel_experience_merges_bank_files(engine, tmp_path):
    learner = build_file_pe(engine, tmp_path)
    assert list(learner.environment_functions) == ["env_1", "env_2"]
    config = LearnerConfig(environment=TaskConfig(kwargs={"epsilon": 0.2}))
    states = [
        s async for s in learner.start(2, False, config)
    ]  # (max_iter, skip_pre_loop, initial_config)
    assert len(states) == 2
    assert learner.seen["update_sizes"] == [7, 7]  # the two files merged for each update
    assert learner.seen["eps"] == [0.2] * 4
    assert states[0].experience_size == 7 and states[0].trained is True
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pkl") == [
        "experience_bank.pkl"
    ]  # the pieces are gone
    with pytest.warns(DeprecationWarning):
        final = await build_file_pe(engine, tmp_path).learn(1, False, None)
    assert final.iteration == 0


async def test_parallel_experience_unreadable_result_without_files_is_an_error(engine, tmp_path):
    learner = build_file_pe(engine, tmp_path)

    @learner.environment_task("quiet", as_executable=False)
    def quiet(*args, **kwargs):
        return "done"

    learner.work_dir = str(tmp_path / "elsewhere")  # no bank files there
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(TypeError, match="experience_bank_"):
        async for _ in learner.start(max_iter=1):
            pass


async def test_parallel_experience_dict_results_are_columns_not_state(engine):
    learner = ParallelExperience(engine)

    @learner.environment_task("env_1", as_executable=False)
    def env_1(*args, **kwargs):
        return {"reward": [1.0, 2.0], "done": [False, True]}

    @learner.update_task(as_executable=False)
    def update(bank, **kwargs):
        return {"mean_reward": float(bank["reward"].mean())}

    states = [s async for s in learner.start(1)]
    assert states[0].experience_size == 2 and states[0].mean_reward == 1.5
    assert "reward" not in states[0].state  # a bank of columns, not state
