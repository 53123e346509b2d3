"""AlgorithmSelector on a real WorkflowEngine: selection, results, and tracking as one run."""

from __future__ import annotations

import pytest

from rose.al import AlgorithmSelector
from rose.config import LearnerConfig, TaskConfig
from rose.events import manifest_to_body
from rose.metrics import MEAN_SQUARED_ERROR_MSE, MODEL_ACCURACY


def build(engine, values: dict[str, list[float]], metric=MEAN_SQUARED_ERROR_MSE, threshold=0.1):
    """Two or more algorithms whose criterion reports ``values[name][i]`` at iteration i."""
    sel = AlgorithmSelector(engine, run_name="select")
    sel.seen = []

    @sel.simulation_task(as_executable=False)
    async def simulation(*a, **k):
        return {"n": 1}

    @sel.training_task(as_executable=False)
    async def training(*a, **k):
        return {"fitted": True}

    def algorithm(name: str):
        async def pick(*a, **k):
            sel.seen.append((name, k.get("k")))
            return {"algo": name, "picked": k.get("k", 1)}

        pick.__name__ = f"pick_{name}"
        return pick

    for name in values:
        sel.active_learn_task(name=name, as_executable=False)(algorithm(name))

    counters = {n: iter(v) for n, v in values.items()}

    @sel.as_stop_criterion(metric, threshold=threshold, as_executable=False)
    async def check(*deps, **k):
        # The algorithm's result arrives as the criterion's dependency.
        return next(counters[deps[-1]["algo"]])

    return sel


async def test_await_start_returns_best_algorithm_and_tracks_one_run(engine, recorder):
    sel = build(engine, {"slow": [0.5, 0.4, 0.3, 0.05], "fast": [0.5, 0.05]})
    sel.add_tracker(recorder)
    result = await sel.start(max_iter=6)
    assert result["best_algorithm"] == "fast"
    assert result["best_stats"] == {"iterations": 2, "last_result": 0.05}
    assert sel.get_best_algorithm() == ("fast", {"iterations": 2, "last_result": 0.05})
    assert (
        sel.get_all_results()
        == result["algorithm_results"]
        == {
            "slow": {"iterations": 4, "last_result": 0.05},
            "fast": {"iterations": 2, "last_result": 0.05},
        }
    )
    kinds = recorder.kinds()
    assert kinds[0] == "start" and kinds.count("start") == 1 and kinds[-1] == "stop"
    manifest = recorder.calls[0][2]
    assert manifest["learner_type"] == "AlgorithmSelector" and manifest["parallel_count"] == 2
    assert list(manifest["tasks"]) == [
        "simulation", "training", "active_learn.slow", "active_learn.fast",
    ]  # fmt: skip
    assert manifest["tasks"]["active_learn.fast"]["func_name"] == "pick_fast"
    series: dict[str, list[int]] = {}
    for kind, _, body in recorder.calls:
        if kind == "iteration":
            series.setdefault(body["learner_id"], []).append(body["iteration"])
            assert body["algo"] == body["learner_id"] if "algo" in body else True
    assert series == {"slow": [0, 1, 2, 3], "fast": [0, 1]}
    stop = recorder.calls[-1][2]
    assert stop["reason"] == "criterion_met"
    assert stop["final_state"]["learner_id"] == "fast" and stop["final_state"]["iteration"] == 1
    assert stop["final_state"]["state"]["algo"] == "fast"


async def test_iterating_start_streams_each_algorithms_states(engine, capsys):
    sel = build(engine, {"a": [0.9] * 3, "b": [0.9] * 3})
    states = []
    async for state in sel.start(max_iter=3):
        states.append(state)
        if state.learner_id == "b" and state.iteration == 0:
            sel.set_next_config(LearnerConfig(active_learn=TaskConfig(kwargs={"k": 3})), "b")
    assert ("b", 3) in sel.seen and ("a", 3) not in sel.seen
    assert capsys.readouterr().out == ""  # logged, not printed
    assert sorted((s.learner_id, s.iteration) for s in states) == [
        (n, i) for n in "ab" for i in range(3)
    ]
    assert all(s.algo == s.learner_id for s in states)
    # equal iterations and values: the first registered wins
    assert sel.get_best_algorithm()[0] == "a"


async def test_ranking_follows_the_criterion_direction(engine):
    # accuracy: higher is better, so at equal iterations "b" (0.8) beats "a" (0.6)
    sel = build(engine, {"a": [0.5, 0.6], "b": [0.5, 0.8]}, metric=MODEL_ACCURACY, threshold=0.99)
    result = await sel.start(max_iter=2)
    assert result["best_algorithm"] == "b"


async def test_per_algorithm_configs_and_bad_input(engine, recorder):
    sel = build(engine, {"a": [0.9] * 2, "b": [0.9] * 2})
    configs = {"b": LearnerConfig(active_learn={-1: TaskConfig(kwargs={"k": 7})})}
    await sel.start(max_iter=2, algorithm_configs=configs)
    assert sorted(set(sel.seen)) == [("a", None), ("b", 7)]

    sel = build(engine, {"a": [0.9]})
    sel.add_tracker(recorder)
    with pytest.raises(ValueError, match="unknown algorithms \\['c'\\]"):
        await sel.start(max_iter=1, algorithm_configs={"c": LearnerConfig()})
    assert recorder.stop_reason == "error"

    empty = AlgorithmSelector(engine)
    empty.simulation_task(as_executable=False)(lambda: 1)
    empty.training_task(as_executable=False)(lambda: 1)
    with pytest.raises(ValueError, match="at least one algorithm"):
        await empty.start(max_iter=1)


async def test_failing_algorithm_is_recorded_and_raised(engine, recorder):
    sel = build(engine, {"good": [0.9] * 3})

    @sel.active_learn_task(name="bad", as_executable=False)
    async def broken(*a, **k):
        raise RuntimeError("diverged")

    sel.add_tracker(recorder)
    with pytest.raises(RuntimeError, match="diverged"):
        await sel.start(max_iter=3)
    assert sel.get_all_results()["bad"] == {
        "iterations": 0,
        "last_result": float("inf"),
        "error": "diverged",
    }
    assert recorder.stop_reason == "error"


def test_manifest_before_start_lists_every_algorithm(engine):
    sel = build(engine, {"x": [1.0], "y": [1.0], "z": [1.0]})
    body = manifest_to_body(sel.build_manifest())
    assert body["parallel_count"] == 3
    assert [t for t in body["tasks"] if t.startswith("active_learn.")] == [
        "active_learn.x", "active_learn.y", "active_learn.z",
    ]  # fmt: skip
    assert list(sel.active_learn_functions) == ["x", "y", "z"]
