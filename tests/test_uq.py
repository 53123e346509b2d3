"""UQ learners on a real WorkflowEngine: the ensemble loop and its data flow, every start()
signature, stop reasons, learner_id names, manifests, configs, tracker isolation."""

from __future__ import annotations

from collections import Counter

import pytest

from rose import TaskConfig
from rose.metrics import MEAN_SQUARED_ERROR_MSE, PREDICTIVE_VARIANCE
from rose.uq import (
    MODEL_NAME_KWARG,
    PREDICTION_INDEX_KWARG,
    ParallelUQLearner,
    SeqUQLearner,
    UQLearnerConfig,
)
from tests.conftest import Recorder


def build(engine, cls=SeqUQLearner, uq=None, mse=None, uncertainty=True, criterion=True, **kw):
    """A UQ learner with function tasks that record what they were called with.

    Predictions are ``[model index + prediction index]``; the uncertainty task
    reports uq[0], uq[1], ... and the criterion mse[model][0], mse[model][1], ...
    """
    learner = cls(engine, **kw)
    uq_values = list(uq or [1.0])
    mse_values = dict(mse or {})
    calls: dict = {k: [] for k in ("sim", "train", "predict", "uq", "acl", "crit")}
    counts: Counter = Counter()

    @learner.simulation_task(as_executable=False)
    async def simulation(*args, **kwargs):
        calls["sim"].append(kwargs)
        return {"n_labeled": 10 * len(calls["sim"])}

    @learner.training_task(as_executable=False, log_params={"ensemble": "bagging"})
    async def training(*args, **kwargs):
        calls["train"].append((args, kwargs))
        return {"train_mse": 0.5, "model": kwargs[MODEL_NAME_KWARG]}

    @learner.prediction_task(as_executable=False)
    async def prediction(*args, **kwargs):
        calls["predict"].append((args, kwargs))
        return (kwargs[MODEL_NAME_KWARG], kwargs[PREDICTION_INDEX_KWARG])

    if uncertainty:

        @learner.uncertainty_quantification(
            uq_metric_name=PREDICTIVE_VARIANCE, query_size=4, threshold=0.05, as_executable=False
        )
        async def check_uq(*args, **kwargs):
            calls["uq"].append((args, kwargs))
            key = ("uq", kwargs.get("learner"))
            counts[key] += 1
            value = uq_values[min(counts[key] - 1, len(uq_values) - 1)]
            return {PREDICTIVE_VARIANCE: value, "query": [0, 1, 2, 3]}

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*args, **kwargs):
        calls["acl"].append((args, kwargs))
        return {"picked": 4}

    if criterion:

        @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.1, as_executable=False)
        async def validate(*args, **kwargs):
            model = kwargs[MODEL_NAME_KWARG]
            calls["crit"].append(model)
            key = ("crit", kwargs.get("learner"), model)
            counts[key] += 1
            series = mse_values.get(model, [0.5])
            return series[min(counts[key] - 1, len(series) - 1)]

    learner.calls = calls
    return learner


def configs_for(*names: str) -> dict[str, UQLearnerConfig]:
    return {
        n: UQLearnerConfig(
            simulation=TaskConfig(kwargs={"--learner_name": n}),
            uncertainty=TaskConfig(kwargs={"learner": n}),
            criterion=TaskConfig(kwargs={"learner": n}),
        )
        for n in names
    }


# ---------------------------------------------------------------- sequential


async def test_ensemble_data_flow_and_state(engine, recorder):
    learner = build(engine, criterion=True, mse={"a": [0.5, 0.3], "b": [0.4, 0.2]})
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(["a", "b"], 3, 2)]
    assert [s.iteration for s in states] == [0, 1]
    calls = learner.calls
    # one simulation per iteration, a training per model, num_predictions per model
    assert len(calls["sim"]) == 2
    trained = [k[MODEL_NAME_KWARG] for _, k in calls["train"]]  # concurrent: any order
    assert sorted(trained[:2]) == sorted(trained[2:]) == ["a", "b"]
    assert calls["train"][0][0] == ({"n_labeled": 10},)  # training got the simulation's result
    first = [(k[MODEL_NAME_KWARG], k[PREDICTION_INDEX_KWARG]) for _, k in calls["predict"][:6]]
    assert sorted(first) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert calls["predict"][0][0][0]["train_mse"] == 0.5  # prediction got its training result
    # the uncertainty task got the predictions as one list per model, in model order
    assert calls["uq"][0][0] == ([[("a", 0), ("a", 1), ("a", 2)], [("b", 0), ("b", 1), ("b", 2)]],)
    # active learning got the uncertainty result
    assert calls["acl"][0][0] == ({PREDICTIVE_VARIANCE: 1.0, "query": [0, 1, 2, 3]},)
    # the criterion ran once per model; the metric is their mean
    assert sorted(calls["crit"][:2]) == ["a", "b"]
    assert [s.metric_value for s in states] == pytest.approx([0.45, 0.25])
    assert states[0].criterion_values == {"a": 0.5, "b": 0.4}
    assert states[0].uq_value == 1.0 and states[0].picked == 4 and states[0].n_labeled == 10
    assert states[0].get("a/train_mse") == 0.5 and states[0].get("b/model") == "b"
    assert recorder.stop_reason == "max_iter_reached"


async def test_state_registry_holds_one_iteration_as_in_every_family(engine):
    # The UQ loop is the learners' one skeleton: each iteration starts from an empty
    # registry, so what was registered during the last one is not carried over.
    learner = build(engine)
    states = []
    async for state in learner.start(["m"], max_iter=2):
        states.append(state)
        learner.register_state("by_hand", state.iteration)
    assert states[0].state["n_labeled"] == 10 and "by_hand" not in states[0].state
    assert states[1].state["n_labeled"] == 20 and "by_hand" not in states[1].state
    assert learner.get_state("by_hand") == 1  # until the next iteration starts


async def test_uncertainty_threshold_stops_before_active_learning(engine, recorder):
    learner = build(engine, uq=[0.5, 0.2, 0.01])
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(model_names=["m"], max_iter=10)]
    assert [s.uq_value for s in states] == [0.5, 0.2, 0.01]
    assert states[-1].should_stop and states[-1].metric_value is None
    assert len(learner.calls["acl"]) == 2  # not after the threshold was met
    assert recorder.stop_reason == "criterion_met"


async def test_max_iter_zero_runs_until_uncertainty_threshold(engine, recorder):
    learner = build(engine, uq=[0.3, 0.04], criterion=False)
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(["m"])]
    assert len(states) == 2 and recorder.stop_reason == "criterion_met"


async def test_criterion_per_model_and_models_that_met_it_stop_training(engine, recorder):
    learner = build(engine, uncertainty=False, mse={"a": [0.05], "b": [0.5, 0.5, 0.05]})
    learner.add_tracker(recorder)
    states = [s async for s in learner.start(["a", "b"], max_iter=10)]
    assert len(states) == 3 and states[-1].should_stop
    assert states[0].criterion_values == {"a": 0.05, "b": 0.5}
    assert states[1].criterion_values == {"b": 0.5}  # "a" is done
    trained = [k[MODEL_NAME_KWARG] for _, k in learner.calls["train"]]
    assert sorted(trained[:2]) == ["a", "b"] and trained[2:] == ["b", "b"]
    # without an uncertainty task, active learning gets the predictions
    assert learner.calls["acl"][0][0] == ([[("a", 0)], [("b", 0)]],)  # in model order
    assert recorder.stop_reason == "criterion_met"


async def test_skip_pre_loop_and_learning_config(engine):
    learner = build(engine, criterion=False)
    config = UQLearnerConfig(
        prediction=TaskConfig(kwargs={"--prediction_dir": "p", MODEL_NAME_KWARG: "ignored"}),
        uncertainty={-1: TaskConfig(kwargs={"--query_size": 4})},
    )
    states = [
        s
        async for s in learner.start(
            model_names=["m"],
            num_predictions=2,
            max_iter=2,
            skip_pre_loop=True,
            learning_config=config,
        )
    ]
    assert len(states) == 2
    assert learner.calls["uq"][0][0] == ()  # nothing predicted yet at iteration 0
    assert learner.calls["uq"][1][1] == {"--query_size": 4}
    got = sorted(learner.calls["predict"][:2], key=lambda c: c[1][PREDICTION_INDEX_KWARG])
    # the learner's model name wins over a configured one
    assert [kw for _, kw in got] == [
        {"--prediction_dir": "p", MODEL_NAME_KWARG: "m", PREDICTION_INDEX_KWARG: k} for k in (0, 1)
    ]
    assert states[1].current_config.get_task_config("uncertainty", 1).kwargs == {"--query_size": 4}


async def test_default_model_name_and_bare_string(engine):
    learner = build(engine, criterion=False)
    async for _ in learner.start(max_iter=1):
        pass
    assert [k[MODEL_NAME_KWARG] for _, k in learner.calls["train"]] == ["model"]
    learner = build(engine, criterion=False)
    async for _ in learner.start("gp", max_iter=1):
        pass
    assert [k[MODEL_NAME_KWARG] for _, k in learner.calls["train"]] == ["gp"]


async def test_invalid_starts_report_error(engine, recorder):
    learner = build(engine, uncertainty=False, criterion=False)
    learner.add_tracker(recorder)
    for kwargs, match in [
        ({"model_names": []}, "at least one model"),
        ({"model_names": ["a", "a"]}, "unique"),
        ({"model_names": ["a"], "num_predictions": 0}, "num_predictions"),
    ]:
        with pytest.raises(ValueError, match=match):
            async for _ in learner.start(max_iter=1, **kwargs):
                pass


def test_uncertainty_decorator_validation(engine):
    learner = SeqUQLearner(engine)
    with pytest.raises(ValueError, match="needs an operator"):
        learner.uncertainty_quantification("my_uq", query_size=2, threshold=0.1)
    with pytest.raises(ValueError, match="query_size"):
        learner.uncertainty_quantification(PREDICTIVE_VARIANCE, query_size=0, threshold=0.1)
    with pytest.raises(TypeError, match="threshold"):
        learner.uncertainty_quantification(PREDICTIVE_VARIANCE, query_size=1, threshold="low")
    learner.uncertainty_quantification("my_uq", 2, 0.1, operator=">", as_executable=False)(
        lambda *a: 1.0
    )
    assert learner.build_manifest().tasks["uncertainty"].log_params["operator"] == ">"


async def test_teach_is_a_deprecated_wrapper(engine):
    with pytest.warns(DeprecationWarning):
        results = await build(engine).teach(["a"], 1, 2)
    # one summary per iteration, as ROSE 0.3's teach() returned
    assert results == [{"iterations": i, "uq": 1.0, "criterion": [0.5]} for i in (0, 1)]
    with pytest.warns(DeprecationWarning):
        finals = await build(engine, ParallelUQLearner).teach(["B", "A"], max_iter=2)
    # a list in learner_names order
    assert [(s.learner_id, s.iteration) for s in finals] == [("B", 1), ("A", 1)]


# ---------------------------------------------------------------- parallel


async def test_parallel_seed_call_stamps_names(engine, recorder):
    # the classic ClearML sample, verbatim: no model_names
    learner = build(engine, ParallelUQLearner, criterion=False)
    learner.add_tracker(recorder)
    states = []
    async for state in learner.start(learner_names=["A", "B"], max_iter=15):
        states.append(state)
    assert sorted((s.learner_id, s.iteration) for s in states) == sorted(
        (n, i) for n in "AB" for i in range(15)
    )
    ids = {c[2]["learner_id"] for c in recorder.calls if c[0] == "iteration"}
    assert ids == {"A", "B"}
    assert recorder.stop_reason == "max_iter_reached"
    assert recorder.calls[-1][2]["final_state"]["iteration"] == 14
    assert learner.build_manifest().parallel_count == 2


async def test_parallel_full_signature_and_configs_by_name(engine, recorder):
    learner = build(engine, ParallelUQLearner, uq=[0.5, 0.01], criterion=False)
    learner.add_tracker(recorder)
    states = [
        s async for s in learner.start(["A", "B"], ["m1", "m2"], 2, 0, False, configs_for("A", "B"))
    ]
    # each learner ran until its own uncertainty met the threshold
    assert sorted((s.learner_id, s.iteration) for s in states) == [
        ("A", 0),
        ("A", 1),
        ("B", 0),
        ("B", 1),
    ]
    assert recorder.stop_reason == "criterion_met"
    assert sorted(k["--learner_name"] for k in learner.calls["sim"]) == ["A", "A", "B", "B"]
    assert len(learner.calls["predict"]) == 2 * 2 * 2 * 2  # learners x iterations x models x preds


async def test_parallel_configs_as_list_and_set_next_config(engine):
    learner = build(engine, ParallelUQLearner, criterion=False)
    async for state in learner.start(
        learner_names=["A", "B"],
        model_names=["m"],
        max_iter=3,
        learner_configs=[None, configs_for("B")["B"]],
    ):
        if state.iteration == 0 and state.learner_id == "A":
            learner.set_next_config(configs_for("A2")["A2"], learner_id="A")
    names = sorted(k.get("--learner_name") or "-" for k in learner.calls["sim"])
    # A: pre-loop and iteration 1 without config, then A2's from its next step; B throughout
    assert names.count("B") == 3 and names.count("A2") >= 1 and "-" in names


async def test_parallel_stop_reasons(engine):
    learner = build(engine, ParallelUQLearner, uncertainty=False, mse={"model": [0.5, 0.01]})
    rec = Recorder()
    learner.add_tracker(rec)
    states = [s async for s in learner.start(["A", "B"], learner_configs=configs_for("A", "B"))]
    assert {s.learner_id for s in states if s.should_stop} == {"A", "B"}
    assert rec.stop_reason == "criterion_met"

    learner = build(engine, ParallelUQLearner)
    rec = Recorder()
    learner.add_tracker(rec)
    async for _ in learner.start(["A", "B"], max_iter=50):
        learner.stop()
    assert rec.stop_reason == "stopped"


async def test_parallel_validation(engine, recorder):
    learner = build(engine, ParallelUQLearner)
    learner.add_tracker(recorder)
    for kwargs, match in [
        ({"learner_names": ["A"]}, "learner_names must be at least 2"),
        ({"learner_names": ["A", "A"]}, "unique"),
        ({"learner_names": ["A", 3]}, "non-empty strings"),
        ({"learner_names": ["A", "B"], "learner_configs": {"C": None}}, "unknown learners"),
        ({"learner_names": ["A", "B"], "learner_configs": [None]}, "1 entries"),
        ({}, "at least 2"),
    ]:
        with pytest.raises(ValueError, match=match):
            async for _ in learner.start(max_iter=1, **kwargs):
                pass
    assert [c[2]["reason"] for c in recorder.calls if c[0] == "stop"] == ["error"] * 6


# ---------------------------------------------------------------- manifests and trackers


async def test_manifest_lists_uq_tasks(engine, recorder):
    learner = build(engine, ParallelUQLearner, learner_names=["A", "B", "C"])
    learner.add_tracker(recorder)
    m = recorder.calls[0][2]
    assert m["learner_type"] == "ParallelUQLearner" and m["parallel_count"] == 3
    assert list(m["tasks"]) == [
        "simulation",
        "training",
        "prediction",
        "uncertainty",
        "active_learn",
    ]
    assert m["tasks"]["uncertainty"]["log_params"] == {
        "uq_metric_name": PREDICTIVE_VARIANCE,
        "query_size": 4,
        "threshold": 0.05,
        "operator": "<",
    }
    assert m["tasks"]["training"]["log_params"] == {"ensemble": "bagging"}
    assert m["criterion"]["metric_name"] == MEAN_SQUARED_ERROR_MSE
    assert build(engine).build_manifest().learner_type == "SeqUQLearner"
    # the constructor's names are start()'s default
    states = [s async for s in learner.start(max_iter=1)]
    assert {s.learner_id for s in states} == {"A", "B", "C"}
