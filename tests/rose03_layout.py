"""Three runs and what ROSE 0.3's trackers write for them: the facts the layout tests check.

The sequential and the parallel run are the ones recorded from ROSE 0.3's
``MLflowTracker`` and ``ClearMLTracker`` (same tasks, same values; the
ClearML hyperparameter values and types are what ClearML stores for the
calls ROSE 0.3 made).  The UQ run was not recorded: its expected layout is
derived from ROSE 0.3's tracker rules (params from the manifest, one metric
per number in the state, ``config/<task>/<key>`` for the roles of its
``LearnerConfig``, ``--`` keys skipped, series ``value`` when sequential).

One value differs by design, not by layout: this project's manifest carries
the criterion's resolved operator (``<`` for a known error metric), where
ROSE 0.3's carries the argument as given (``""``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rose import LearnerConfig, TaskConfig
from rose.al import ParallelActiveLearner, SequentialActiveLearner
from rose.metrics import MEAN_SQUARED_ERROR_MSE, PREDICTIVE_VARIANCE
from rose.uq import MODEL_NAME_KWARG, SeqUQLearner, UQLearnerConfig

#: The one value this project's manifest spells differently (see the module docstring).
OPERATOR_HERE = {"criterion/operator": "<"}

# The executable-style flag is skipped by ROSE 0.3's trackers; it is here to show it.
TRAINING = {"lr": 0.01, "optimizer": "adam", "--log-dir": "/tmp/rose-layout"}


def _simulation_and_training(learner: Any, model: Callable[[dict], str]) -> None:
    """The tasks every run shares; training reports ``model(its kwargs)`` as its model."""

    @learner.simulation_task(as_executable=False)
    async def simulation(*args, **kwargs):
        return {"n_sim": 10}

    @learner.training_task(as_executable=False, log_params={"num_gpus": 2})
    async def training(*args, **kwargs):
        return {"train_loss": 0.25, "model": model(kwargs)}


def _active_learn_and_criterion(learner: Any, mse: Callable[[dict], float] | None) -> None:
    """The last tasks every run shares; the criterion (if any) reports ``mse(its kwargs)``."""

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*args, **kwargs):
        return {"picked": 3}

    if mse is not None:

        @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.1, as_executable=False)
        async def check_mse(*args, **kwargs):
            return mse(kwargs)


def _al_tasks(learner: Any, criterion: bool) -> Any:
    mse = iter((0.5, 0.3, 0.05))
    _simulation_and_training(learner, lambda kwargs: "gp")
    _active_learn_and_criterion(learner, (lambda kwargs: next(mse)) if criterion else None)
    return learner


def _uq_tasks(learner: Any) -> Any:
    mse = {"m1": iter((0.5, 0.3, 0.05)), "m2": iter((0.4, 0.2, 0.05))}
    uq = iter((1.0, 0.5, 0.2))
    _simulation_and_training(learner, lambda kwargs: kwargs[MODEL_NAME_KWARG])

    @learner.prediction_task(as_executable=False)
    async def prediction(*args, **kwargs):
        return [0.1, 0.2]

    @learner.uncertainty_quantification(
        uq_metric_name=PREDICTIVE_VARIANCE, query_size=4, threshold=0.05, as_executable=False
    )
    async def check_uq(*args, **kwargs):
        return next(uq)

    _active_learn_and_criterion(learner, lambda kwargs: next(mse[kwargs[MODEL_NAME_KWARG]]))
    return learner


async def run_seq(engine: Any, add_trackers: Any) -> str:
    learner = _al_tasks(SequentialActiveLearner(engine), criterion=True)
    add_trackers(learner)
    config = LearnerConfig(training=TaskConfig(kwargs=dict(TRAINING)))
    async for _ in learner.start(max_iter=5, initial_config=config):
        pass
    return learner.run_id


async def run_par(engine: Any, add_trackers: Any) -> str:
    learner = _al_tasks(ParallelActiveLearner(engine), criterion=False)
    add_trackers(learner)
    config = LearnerConfig(training=TaskConfig(kwargs=dict(TRAINING)))
    async for _ in learner.start(parallel_learners=2, max_iter=2, learner_configs=[config, None]):
        pass
    return learner.run_id


async def run_uq(engine: Any, add_trackers: Any) -> str:
    learner = _uq_tasks(SeqUQLearner(engine))
    add_trackers(learner)
    config = UQLearnerConfig(
        training=TaskConfig(kwargs=dict(TRAINING)),
        # Not a role of ROSE 0.3's LearnerConfig: recorded under rose.
        uncertainty=TaskConfig(kwargs={"temperature": 0.5, "--query_size": 4}),
    )
    states = learner.start(["m1", "m2"], num_predictions=1, max_iter=5, learning_config=config)
    async for _ in states:
        pass
    return learner.run_id


@dataclass(frozen=True)
class Layout:
    run: Any  # async (engine, add_trackers) -> rose run id
    mlflow: dict[str, Any]
    #: Names of this project's additions beyond the run id and origin, per backend.
    mlflow_extra_params: frozenset[str]
    mlflow_extra_tags: frozenset[str]
    mlflow_extra_metrics: frozenset[str]
    clearml: dict[str, Any]
    clearml_extra_scalars: frozenset[str]
    learner_names: tuple[str, ...] | None = None


def _steps(value: float, n: int) -> list[tuple[int, float]]:
    return [(i, value) for i in range(n)]


_AL_PARAMS = {
    "task.active_learn.as_executable": "False",
    "task.simulation.as_executable": "False",
    "task.training.as_executable": "False",
    "task.training.num_gpus": "2",
}

_GENERAL_AL = {
    "task/active_learn/as_executable": ("False", "bool"),
    "task/simulation/as_executable": ("False", "bool"),
    "task/training/as_executable": ("False", "bool"),
    "task/training/num_gpus": ("2", "int"),
}


# The sequential and the UQ run share their criterion and end by it at iteration 2.
_CRITERION_PARAMS = {
    "criterion/metric_name": "mean_squared_error_mse",
    "criterion/operator": "",
    "criterion/threshold": "0.1",
}
_CRITERION_GENERAL = {
    "criterion/metric_name": ("mean_squared_error_mse", "str"),
    "criterion/operator": ("", "str"),
    "criterion/threshold": ("0.1", "float"),
}
_MET_AT_2_TAGS = {
    "config/training/optimizer": "adam",
    "final_iteration": "2",
    "stop_reason": "criterion_met",
}
_MET_AT_2_CLEARML_TAGS = ["final_iter:2", "stop:criterion_met"]
_CURRENT_CONFIG = {"training/optimizer": ("adam", "str")}


def _scalars(series: str, iterations: range, extra: dict[str, float] | None = None) -> list:
    values = {"n_sim": 10.0, "train_loss": 0.25, "picked": 3.0, **(extra or {})}
    return [(k, series, i, v) for i in iterations for k, v in values.items()]


SEQ = Layout(
    run=run_seq,
    mlflow={
        "status": "FINISHED",
        "params": {
            **_CRITERION_PARAMS,
            "learner_type": "SequentialActiveLearner",
            "parallel_learners": "None",
            **_AL_PARAMS,
        },
        "metrics": {
            "config/training/lr": _steps(0.01, 3),
            "mean_squared_error_mse": [(0, 0.5), (1, 0.3), (2, 0.05)],
            "n_sim": _steps(10.0, 3),
            "picked": _steps(3.0, 3),
            "train_loss": _steps(0.25, 3),
        },
        "tags": _MET_AT_2_TAGS,
    },
    mlflow_extra_params=frozenset({"rose.task.criterion.as_executable"}),
    mlflow_extra_tags=frozenset(),
    mlflow_extra_metrics=frozenset(),
    clearml={
        "hyperparams": {
            "General": {
                **_CRITERION_GENERAL,
                "learner_type": ("SequentialActiveLearner", "str"),
                "parallel_learners": ("", None),
                **_GENERAL_AL,
            },
            "current_config": _CURRENT_CONFIG,
        },
        "tags": _MET_AT_2_CLEARML_TAGS,
        "scalars": [
            *_scalars("value", range(3), {"config/training/lr": 0.01}),
            ("mean_squared_error_mse", "value", 0, 0.5),
            ("mean_squared_error_mse", "value", 1, 0.3),
            ("mean_squared_error_mse", "value", 2, 0.05),
        ],
    },
    clearml_extra_scalars=frozenset(),
)

PAR = Layout(
    run=run_par,
    mlflow={
        "status": "FINISHED",
        "params": {
            "criterion/metric_name": "None",
            "criterion/operator": "None",
            "criterion/threshold": "None",
            "learner_type": "ParallelActiveLearner",
            "parallel_learners": "None",
            **_AL_PARAMS,
        },
        "metrics": {
            "0/config/training/lr": _steps(0.01, 2),
            "0/n_sim": _steps(10.0, 2),
            "0/picked": _steps(3.0, 2),
            "0/train_loss": _steps(0.25, 2),
            "1/n_sim": _steps(10.0, 2),
            "1/picked": _steps(3.0, 2),
            "1/train_loss": _steps(0.25, 2),
        },
        "tags": {"0/config/training/optimizer": "adam", "stop_reason": "max_iter_reached"},
    },
    mlflow_extra_params=frozenset(),
    # This project's parallel learners report their last state, one learner's.
    mlflow_extra_tags=frozenset({"rose.final_iteration", "rose.final_learner"}),
    mlflow_extra_metrics=frozenset(),
    clearml={
        "hyperparams": {
            "General": {
                "criterion/metric_name": ("", None),
                "criterion/operator": ("", None),
                "criterion/threshold": ("", None),
                "learner_type": ("ParallelActiveLearner", "str"),
                "parallel_learners": ("", None),
                **_GENERAL_AL,
            },
            "current_config": _CURRENT_CONFIG,
        },
        "tags": ["stop:max_iter_reached"],
        "scalars": [
            *_scalars("ens-A", range(2), {"config/training/lr": 0.01}),
            *_scalars("ens-B", range(2)),
        ],
    },
    clearml_extra_scalars=frozenset(),
    learner_names=("ens-A", "ens-B"),
)

# Derived from ROSE 0.3's tracker rules (not recorded); state keys are this project's UQ
# learner's: the simulation's, the last model's training keys as returned and each
# model's as <model>/<key>, uq_value, the active learner's; criterion_values (a map per
# model) and the model names are not numbers.
_UQ_NUMBERS = {
    "n_sim": 10.0,
    "train_loss": 0.25,
    "picked": 3.0,
    "m1/train_loss": 0.25,
    "m2/train_loss": 0.25,
}
_UQ_VALUES = (1.0, 0.5, 0.2)
_UQ_MSE = (0.45, 0.25, 0.05)

UQ = Layout(
    run=run_uq,
    mlflow={
        "status": "FINISHED",
        "params": {
            **_CRITERION_PARAMS,
            "learner_type": "SeqUQLearner",
            "parallel_learners": "None",
            "task.simulation.as_executable": "False",
            "task.training.as_executable": "False",
            "task.training.num_gpus": "2",
            "task.prediction.as_executable": "False",
            "task.uncertainty.as_executable": "False",
            "task.uncertainty.uq_metric_name": PREDICTIVE_VARIANCE,
            "task.uncertainty.query_size": "4",
            "task.uncertainty.threshold": "0.05",
            "task.uncertainty.operator": "<",
            "task.active_learn.as_executable": "False",
        },
        "metrics": {
            **{k: _steps(v, 3) for k, v in _UQ_NUMBERS.items()},
            "uq_value": list(enumerate(_UQ_VALUES)),
            "mean_squared_error_mse": list(enumerate(_UQ_MSE)),
            "config/training/lr": _steps(0.01, 3),
        },
        "tags": _MET_AT_2_TAGS,
    },
    mlflow_extra_params=frozenset({"rose.task.criterion.as_executable"}),
    mlflow_extra_tags=frozenset(),
    mlflow_extra_metrics=frozenset({"rose.config/uncertainty/temperature"}),
    clearml={
        "hyperparams": {
            "General": {
                **_CRITERION_GENERAL,
                "learner_type": ("SeqUQLearner", "str"),
                "parallel_learners": ("", None),
                "task/simulation/as_executable": ("False", "bool"),
                "task/training/as_executable": ("False", "bool"),
                "task/training/num_gpus": ("2", "int"),
                "task/prediction/as_executable": ("False", "bool"),
                "task/uncertainty/as_executable": ("False", "bool"),
                "task/uncertainty/uq_metric_name": (PREDICTIVE_VARIANCE, "str"),
                "task/uncertainty/query_size": ("4", "int"),
                "task/uncertainty/threshold": ("0.05", "float"),
                "task/uncertainty/operator": ("<", "str"),
                "task/active_learn/as_executable": ("False", "bool"),
            },
            "current_config": _CURRENT_CONFIG,
        },
        "tags": _MET_AT_2_CLEARML_TAGS,
        "scalars": [
            (k, "value", i, v)
            for i in range(3)
            for k, v in {
                **_UQ_NUMBERS,
                "uq_value": _UQ_VALUES[i],
                "mean_squared_error_mse": _UQ_MSE[i],
                "config/training/lr": 0.01,
            }.items()
        ],
    },
    clearml_extra_scalars=frozenset({"rose.config/uncertainty/temperature"}),
)

RUNS = {"seq": SEQ, "par": PAR, "uq": UQ}
