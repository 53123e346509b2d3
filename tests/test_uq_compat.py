"""What ROSE 0.3 scripts rely on in the UQ learners, on a real WorkflowEngine: the
uncertainty_task decorator, get_uncertainty_results(), UQLearnerConfig as a pydantic
model, teach() results."""

from __future__ import annotations

import math

import pytest

from rose import TaskConfig
from rose.metrics import CUSTOM_UQ, MEAN_SQUARED_ERROR_MSE, PREDICTIVE_ENTROPY
from rose.uq import ParallelUQLearner, SeqUQLearner, UQLearnerConfig, UQScorer, register_uq
from rose.uq.uq_scorer import UQ_REGISTRY

# two members, two instances, two classes: instance 0 is split, instance 1 is sure
PROBS = [[[1.0, 0.0], [0.99, 0.01]], [[0.0, 1.0], [0.97, 0.03]]]


def pipeline(engine, cls=SeqUQLearner, uq_values=None, uncertainty="threshold"):
    """A UQ pipeline whose uncertainty task scores real predictions with a UQScorer."""
    learner = cls(engine)
    seen: dict = {"acl": [], "uq_kwargs": [], "uq_args": [], "crit_args": []}
    values = iter(uq_values) if uq_values is not None else None

    @learner.simulation_task(as_executable=False)
    async def simulation(*args, **kwargs):
        return {"pool": 2}

    @learner.training_task(as_executable=False)
    async def training(*args, **kwargs):
        return {"trained": kwargs["--model_name"]}

    @learner.prediction_task(as_executable=False)
    async def prediction(*args, **kwargs):
        return PROBS[kwargs["--iteration"]]

    async def check_uq(*args, **kwargs):
        seen["uq_kwargs"].append(kwargs)
        seen["uq_args"].append(args)
        value = next(values, None) if values is not None else None
        if value is not None:  # the given values first, then real scores
            return value
        if not args:
            return 1.0
        (by_model,) = args  # one list per model of that model's predictions
        predictions = [p for per_model in by_model for p in per_model]
        scorer = UQScorer(task_type="classification")
        _, scores = scorer.select_top_uncertain(predictions, k=1, metric=PREDICTIVE_ENTROPY)
        return float(scores.mean())

    if uncertainty == "threshold":
        learner.uncertainty_quantification(
            uq_metric_name=PREDICTIVE_ENTROPY, query_size=1, threshold=0.01, as_executable=False
        )(check_uq)
    elif uncertainty == "plain":
        learner.uncertainty_task(as_executable=False)(check_uq)

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*args, **kwargs):
        seen["acl"].append(args)
        return {"queried": 1}

    @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.0, as_executable=False)
    async def check_mse(*args, **kwargs):
        seen["crit_args"].append(args)
        return 0.5

    learner.seen = seen
    return learner


async def test_uncertainty_results_per_iteration(engine):
    learner = pipeline(engine, uq_values=[0.9, 0.5, 0.2])
    states = [s async for s in learner.start(model_names=["m"], num_predictions=2, max_iter=3)]
    assert [s.uq_value for s in states] == [0.9, 0.5, 0.2]
    assert learner.get_uncertainty_results() == {0: 0.9, 1: 0.5, 2: 0.2}
    assert learner.uncertainty_values_per_iteration == {0: 0.9, 1: 0.5, 2: 0.2}
    assert learner.learner_name == "UQLearner"
    # a new run starts new results
    states = [s async for s in learner.start(model_names=["m"], num_predictions=2, max_iter=1)]
    assert learner.get_uncertainty_results() == {0: pytest.approx(math.log(2))}


async def test_uncertainty_task_without_threshold_feeds_active_learning(engine):
    learner = pipeline(engine, uncertainty="plain")
    states = [s async for s in learner.start(model_names=["m"], num_predictions=2, max_iter=2)]
    assert [s.iteration for s in states] == [0, 1]  # never stops the run
    entropy = learner.get_uncertainty_results()[0]
    assert entropy == pytest.approx(math.log(2))  # the top-1 instance: the split one
    assert learner.seen["acl"][0] == (entropy,)  # active learning got the uncertainty result
    manifest = learner.build_manifest()
    assert "uncertainty" in manifest.tasks
    # without a threshold, max_iter=0 could never end
    no_crit = pipeline(engine, uncertainty="plain")
    del no_crit._tasks["criterion"]
    with pytest.raises(ValueError, match="no threshold"):
        async for _ in no_crit.start(model_names=["m"], max_iter=0):
            pass


async def test_parallel_results_and_teach_order(engine):
    learner = pipeline(engine, ParallelUQLearner, uncertainty="plain")
    with pytest.warns(DeprecationWarning):
        finals = await learner.teach(["Z", "A"], ["m"], 2, 2)
    assert [s.learner_id for s in finals] == ["Z", "A"]
    assert set(learner.get_uncertainty_results()) == {"learner-Z", "learner-A"}
    assert set(learner.get_uncertainty_results()["learner-A"]) == {0, 1}


async def test_custom_metric_with_the_scorer_first_inside_a_run(engine):
    @register_uq(CUSTOM_UQ)
    def one_minus_max(self, mc_preds):
        preds, _ = self._validate_inputs(mc_preds)
        return 1.0 - preds.mean(axis=0).max(axis=1)

    learner = pipeline(engine, uncertainty=None)

    @learner.uncertainty_quantification(
        uq_metric_name=CUSTOM_UQ, query_size=1, threshold=0.3, as_executable=False
    )
    async def check_uq(by_model, **kwargs):
        predictions = [p for per_model in by_model for p in per_model]
        _, s = UQScorer("classification").select_top_uncertain(predictions, 2, CUSTOM_UQ)
        return float(s.mean())

    try:
        states = [s async for s in learner.start(model_names=["m"], num_predictions=2, max_iter=3)]
    finally:
        UQ_REGISTRY.pop(CUSTOM_UQ)
    # instance 0 averages to (.5, .5), instance 1 to (.98, .02): mean of 1-max = 0.26 < 0.3
    assert len(states) == 1 and states[0].should_stop
    assert states[0].uq_value == pytest.approx(0.26)


async def test_what_each_task_receives(engine):
    learner = pipeline(engine, uncertainty="plain")
    async for _ in learner.start(model_names=["m1", "m2"], num_predictions=2, max_iter=2):
        pass
    # the uncertainty task: one argument, a list per model (model order) of its predictions
    assert learner.seen["uq_args"][0] == ([PROBS, PROBS],)
    # active learning: the uncertainty result; the criterion: active learning's result
    assert learner.seen["acl"][0] == (math.log(2),)
    assert learner.seen["crit_args"][0] == ({"queried": 1},)

    learner = pipeline(engine, uncertainty="plain")
    async for _ in learner.start(model_names=["m"], max_iter=1, skip_pre_loop=True):
        pass
    assert learner.seen["uq_args"] == [()]  # nothing ran before it


def test_uq_learner_config_is_a_keyword_only_pydantic_model():
    cfg = UQLearnerConfig(
        training=TaskConfig(kwargs={"--epochs": 10}),
        uncertainty={0: TaskConfig(kwargs={"--k": 1}), 2: TaskConfig(kwargs={"--k": 5})},
    )
    with pytest.raises(TypeError):
        UQLearnerConfig(TaskConfig())  # keyword-only
    dumped = cfg.model_dump()
    assert dumped["training"] == {"args": (), "kwargs": {"--epochs": 10}}
    assert dumped["prediction"] is None and set(dumped) >= {"uncertainty", "criterion"}
    again = UQLearnerConfig.model_validate(dumped)
    assert again.training == cfg.training
    assert again.uncertainty[2].kwargs == {"--k": 5}
    with pytest.raises(ValueError):
        UQLearnerConfig(uncertanity=TaskConfig())  # a misspelt task is an error, not ignored


async def test_uq_learner_config_reaches_the_tasks(engine):
    learner = pipeline(engine)
    cfg = UQLearnerConfig(uncertainty=TaskConfig(kwargs={"--query_size": 3}))
    async for _ in learner.start(
        model_names=["m"], num_predictions=2, max_iter=1, learning_config=cfg
    ):
        pass
    assert learner.seen["uq_kwargs"] == [{"--query_size": 3}]
