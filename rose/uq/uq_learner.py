"""UQ learners' shared part: tasks, configuration and the per-lane loop.

Each iteration of a UQ learner trains an *ensemble*: one simulation, then for
every model name a training task and ``num_predictions`` prediction tasks; an
uncertainty task scores the predictions, an active-learning task picks the
next queries, and the stop criterion validates each model.

How tasks tell the models apart (the keys older ROSE scripts read):

- training, prediction and the criterion get ``kwargs["--model_name"]``
  (:data:`MODEL_NAME_KWARG`);
- prediction also gets ``kwargs["--iteration"]`` (:data:`PREDICTION_INDEX_KWARG`),
  the index 0…num_predictions-1 of that prediction for its model.

These win over a TaskConfig's kwargs of the same name.  Data flow (each
task gets one positional argument, after its TaskConfig's args): training
the simulation's result, each prediction its model's training result, the
uncertainty task the predictions as a list per model (model order) of lists
(prediction index order), active learning the uncertainty result (or those
predictions when no uncertainty task is registered), and the criterion the
active learning result.

Stopping: the run ends with ``criterion_met`` when the uncertainty score
reaches its threshold (checked before active learning), or when every model
met the stop criterion (a model that met it stops training; the iteration's
``metric_value`` is the mean over the models still validated).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rose import metrics
from rose.config import LearnerConfig, Schedule, TaskConfig
from rose.learner.base import Learner
from rose.learner.lanes import Lane
from rose.learner.tasks import task_decorator
from rose.tracking import IterationState

log = logging.getLogger(__name__)

#: Keyword through which training, prediction and criterion tasks get their model's name.
MODEL_NAME_KWARG = "--model_name"
#: Keyword through which a prediction task gets its index among its model's predictions.
PREDICTION_INDEX_KWARG = "--iteration"
#: Model names used when ``start()`` is given none: a single model.
DEFAULT_MODEL_NAMES: tuple[str, ...] = ("model",)


class UQLearnerConfig(LearnerConfig):
    """LearnerConfig with the UQ learners' extra task (``prediction`` is in the base)."""

    uncertainty: Schedule = None


@dataclass
class _Ensemble:
    """What one simulation → training → prediction stage produced."""

    simulation: Any
    training: dict[str, Any]
    predictions: list[list[Any]]  # per model, in model order


class UQLearner(Learner):
    """Task decorators and the loop shared by SeqUQLearner and ParallelUQLearner."""

    roles = ("simulation", "training", "prediction", "uncertainty", "active_learn")
    stop_roles = ("criterion", "uncertainty")

    training_task = task_decorator(
        "training", "Register the task that trains one model (its name in kwargs['--model_name'])."
    )
    prediction_task = task_decorator(
        "prediction",
        "Register the task that predicts with one trained model (see module docstring).",
    )
    uncertainty_task = task_decorator(
        "uncertainty",
        "Register an uncertainty task without a threshold: its result goes to active "
        "learning and, when it is a number, into the uncertainty results; it never stops "
        "the run (``uncertainty_quantification`` registers one that can).",
    )

    def __init__(self, asyncflow: Any, *, run_name: str | None = None) -> None:
        super().__init__(asyncflow, run_name=run_name)
        #: Name of a sequential learner; a parallel learner's states carry theirs as learner_id.
        self.learner_name: str = "UQLearner"
        #: One dict per iteration: ``iterations``, ``uq`` and ``criterion`` (what teach() returns).
        self.learner_results: list[dict[str, Any]] = []
        self._uq_values: dict[Any, dict[int, float]] = {}

    @property
    def uncertainty_values_per_iteration(self) -> dict[Any, Any]:
        """Uncertainty score by iteration; a parallel learner's by ``"learner-<name>"``."""
        return dict(self._uq_values.get(None, {}))

    def get_uncertainty_results(self) -> dict[Any, Any]:
        """The uncertainty scores of the last run (see ``uncertainty_values_per_iteration``)."""
        return self.uncertainty_values_per_iteration

    def uncertainty_quantification(
        self,
        uq_metric_name: str,
        query_size: int,
        threshold: float,
        operator: str = "",
        as_executable: bool = True,
        **options: Any,
    ) -> Callable[[Callable], Callable]:
        """Register the task that scores the ensemble's predictions with ``uq_metric_name``.

        Its result is read like a criterion's (a number, numeric stdout, or a
        dict holding ``uq_metric_name``); the run stops once it passes
        ``threshold`` (``operator``, or the metric's own in ``rose.metrics``).
        ``query_size`` is how many points active learning should query; it is
        recorded, with the metric, in the task's ``log_params`` for trackers.
        """
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
        if isinstance(query_size, bool) or not isinstance(query_size, int) or query_size < 1:
            raise ValueError(f"query_size must be an int >= 1, got {query_size!r}")
        op = metrics.resolve_operator(uq_metric_name, operator)
        user_params = options.pop("log_params", None) or {}
        log_params = {
            "uq_metric_name": uq_metric_name,
            "query_size": query_size,
            "threshold": float(threshold),
            "operator": op,
            **user_params,
        }
        return self._decorator(
            "uncertainty",
            None,
            {"as_executable": as_executable, "log_params": log_params, **options},
            metric_name=uq_metric_name,
            threshold=float(threshold),
            operator=op,
        )

    # ------------------------------------------------------------ checks

    def _check_tasks(self, max_iter: int, model_names: list[str], num_predictions: int) -> None:
        self._require("simulation", "training", "prediction", "active_learn")
        self._check_max_iter(max_iter)
        uq = self._tasks.get("uncertainty")
        if max_iter == 0 and "criterion" not in self._tasks and uq is not None and not uq.operator:
            raise ValueError(
                "max_iter=0 means 'until a threshold is met', but the uncertainty task has no "
                "threshold: pass max_iter=N, or register it with "
                "@learner.uncertainty_quantification(uq_metric_name, query_size, threshold)"
            )
        if not model_names:
            raise ValueError("model_names must name at least one model")
        if len(set(model_names)) != len(model_names):
            raise ValueError(f"model_names must be unique, got {model_names}")
        if (
            isinstance(num_predictions, bool)
            or not isinstance(num_predictions, int)
            or num_predictions < 1
        ):
            raise ValueError(f"num_predictions must be an int >= 1, got {num_predictions!r}")

    # ------------------------------------------------------------ loop

    def _submit_for(
        self, role: str, lane: Lane, iteration: int, extra: dict[str, Any], *deps: Any
    ) -> Any:
        config = lane.config.task_config(role, iteration) if lane.config else None
        config = config or TaskConfig()
        config = config.model_copy(update={"kwargs": {**config.kwargs, **extra}})
        return self._submit(self._tasks[role], config, *deps)

    async def _ensemble(
        self, lane: Lane, iteration: int, models: list[str], num_predictions: int
    ) -> _Ensemble:
        """One simulation, then every model's training and predictions, concurrently.

        Results are awaited and passed on as values rather than as future
        dependencies: radical.asyncflow 0.6 can take up to a second to release
        a task whose dependency finished while its scheduler was idle.
        """
        sim = await self.submit("simulation", lane, iteration)

        async def model(name: str) -> tuple[Any, list[Any]]:
            trained = await self._submit_for(
                "training", lane, iteration, {MODEL_NAME_KWARG: name}, sim
            )
            extra = [
                {MODEL_NAME_KWARG: name, PREDICTION_INDEX_KWARG: k} for k in range(num_predictions)
            ]
            predictions = [
                self._submit_for("prediction", lane, iteration, kw, trained) for kw in extra
            ]
            return trained, list(await asyncio.gather(*predictions))

        per_model = await asyncio.gather(*(model(m) for m in models))
        return _Ensemble(
            simulation=sim,
            training={m: t for m, (t, _) in zip(models, per_model, strict=True)},
            predictions=[preds for _, preds in per_model],
        )

    def _record(self, lane: Lane, stage: _Ensemble) -> None:
        """Simulation dicts go into state as they are; training dicts under ``<model>/<key>``."""
        self.extract_state(lane, stage.simulation)
        for model, result in stage.training.items():
            per_model = Lane(learner_id=lane.learner_id)
            self.extract_state(per_model, result)
            lane.state.update({f"{model}/{k}": v for k, v in per_model.state.items()})

    def _reset_results(self) -> None:
        self.learner_results = []
        self._uq_values = {}

    def _check_uncertainty(self, lane: Lane, result: Any) -> tuple[bool, float | None]:
        """(threshold met, score) of an uncertainty result; a task without a threshold never
        stops the run, and its score is None unless it produced a number."""
        if self._tasks["uncertainty"].operator:
            return self.check_criterion(lane, result, role="uncertainty")
        if isinstance(result, dict):
            self.extract_state(lane, result)
            return False, None
        try:
            value = float(str(result).strip().splitlines()[-1]) if result is not None else None
        except (ValueError, IndexError):
            value = None
        return False, value

    def _record_result(self, state: IterationState) -> IterationState:
        """Keep the per-iteration summary ROSE 0.3's teach() returned (sequential runs)."""
        if state.learner_id is None:
            entry: dict[str, Any] = {"iterations": state.iteration}
            if state.state.get("uq_value") is not None:
                entry["uq"] = state.state["uq_value"]
            if state.state.get("criterion_values") is not None:
                entry["criterion"] = list(state.state["criterion_values"].values())
            self.learner_results.append(entry)
        return state

    def _lane(
        self,
        lane: Lane,
        model_names: list[str],
        num_predictions: int,
        max_iter: int,
        skip_pre_loop: bool,
    ) -> AsyncIterator[IterationState]:
        """One UQ loop on the learner skeleton: each step trains the ensemble; between it
        and the criterion, the uncertainty score (which may end the run) and active
        learning; the criterion validates every model still training."""
        models = list(model_names)  # the models still training
        return self._iterate(
            lane,
            max_iter,
            skip_pre_loop,
            step=lambda it: self._ensemble(lane, it, models, num_predictions),
            record=lambda stage: self._record(lane, stage),
            middle=lambda it, stage: self._score_and_query(lane, it, stage),
            criterion=lambda it, queried: self._validate(lane, it, models, queried),
            finish=self._record_result,
        )

    async def _score_and_query(
        self, lane: Lane, iteration: int, stage: _Ensemble | None
    ) -> tuple[Any, bool]:
        """The uncertainty task on the predictions, then active learning on its result.

        Returns (active learning's result, the uncertainty threshold was met); when
        it was met, active learning does not run.
        """
        # no positional argument when there is nothing before (skip_pre_loop)
        acl_inputs: tuple = (stage.predictions,) if stage is not None else ()
        if self.has_task("uncertainty"):
            uq_result = await self.submit("uncertainty", lane, iteration, *acl_inputs)
            if self._stop_requested:
                return None, False
            uq_met, uq_value = self._check_uncertainty(lane, uq_result)
            if uq_value is not None:
                lane.state["uq_value"] = uq_value
                self._uq_values.setdefault(lane.learner_id, {})[iteration] = uq_value
            if uq_met:
                log.info(
                    "learner %s: uncertainty %.6g met its threshold", lane.learner_id, uq_value
                )
                return None, True
            acl_inputs = (uq_result,)
        return await self.submit("active_learn", lane, iteration, *acl_inputs), False

    async def _validate(
        self, lane: Lane, iteration: int, models: list[str], queried: Any
    ) -> tuple[bool, float | None] | None:
        """The stop criterion for each model still training; a model that met it stops
        training.  The metric is the mean over the models validated; the run stops when
        none is left."""
        if not self.has_task("criterion"):
            return False, None
        checks = [
            self._submit_for("criterion", lane, iteration, {MODEL_NAME_KWARG: m}, queried)
            for m in models
        ]
        results = await asyncio.gather(*checks)
        if self._stop_requested:
            return None
        values: dict[str, float] = {}
        for model, result in zip(list(models), results, strict=True):
            met, values[model] = self.check_criterion(lane, result)
            if met:
                models.remove(model)
        lane.state["criterion_values"] = values
        return not models, sum(values.values()) / len(values)


def model_list(model_names: Sequence[str] | str | None) -> list[str]:
    """``model_names`` as a list: one bare name is one model; None is the default."""
    if model_names is None:
        return list(DEFAULT_MODEL_NAMES)
    if isinstance(model_names, str):
        return [model_names]
    return [str(m) for m in model_names]
