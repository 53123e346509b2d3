"""UQ-driven active learners: one ensemble loop, or several named ones in parallel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from radical.asyncflow import WorkflowEngine

from rose.config import LearnerConfig, TaskConfig
from rose.learner.deprecated import Finals, deprecated_run
from rose.learner.lanes import Lane
from rose.tracking import IterationState
from rose.uq.uq_learner import UQLearner, UQLearnerConfig, model_list

__all__ = ["SeqUQLearner", "ParallelUQLearner", "UQLearnerConfig", "TaskConfig", "IterationState"]

LearnerConfigs = Mapping[str, LearnerConfig | None] | Sequence[LearnerConfig | None]


def _iteration_results(learner: SeqUQLearner, finals: Finals, args: dict[str, Any]) -> list:
    """one dict per iteration (``iterations``, ``uq``, ``criterion``: the criterion values in
    model order)"""
    return list(learner.learner_results)


def _final_states_by_name(
    learner: ParallelUQLearner, finals: Finals, args: dict[str, Any]
) -> list[IterationState | None]:
    """each learner's final state, in ``learner_names`` order"""
    return [finals.get(n) for n in learner._names(args["learner_names"])]


class SeqUQLearner(UQLearner):
    """One UQ active-learning loop over an ensemble of ``model_names``."""

    def start(
        self,
        model_names: Sequence[str] | str | None = None,
        num_predictions: int = 1,
        max_iter: int = 0,
        skip_pre_loop: bool = False,
        learning_config: LearnerConfig | None = None,
    ) -> AsyncIterator[IterationState]:
        """Yield an IterationState per iteration (``model_names`` default: one model)."""
        models = model_list(model_names)
        self._reset_results()
        lane = Lane(learner_id=None, config=learning_config)
        return self._run(
            [lane],
            lambda ln: self._lane(ln, models, num_predictions, max_iter, skip_pre_loop),
            check=lambda: self._check_tasks(max_iter, models, num_predictions),
        )

    teach = deprecated_run(_iteration_results)


class ParallelUQLearner(UQLearner):
    """Several named UQ loops at once; each state's ``learner_id`` is its learner's name.

    ``learner_configs`` is a list in ``learner_names`` order or a dict by name
    (names left out run without a configuration).  ``set_next_config(cfg,
    learner_id="A")`` retargets one learner.
    """

    def __init__(
        self,
        asyncflow: WorkflowEngine,
        learner_names: Sequence[str] | None = None,
        *,
        run_name: str | None = None,
    ) -> None:
        super().__init__(asyncflow, run_name=run_name)
        # Known before start() only if given here; the manifest then carries the count.
        self._names_hint = list(learner_names) if learner_names is not None else None

    @property
    def parallel_count(self) -> int | None:
        if self._lanes:
            return len(self._lanes)
        return len(self._names_hint) if self._names_hint is not None else None

    def _names(self, learner_names: Sequence[str] | None) -> list[str]:
        return list(learner_names if learner_names is not None else self._names_hint or [])

    def start(
        self,
        learner_names: Sequence[str] | None = None,
        model_names: Sequence[str] | str | None = None,
        num_predictions: int = 1,
        max_iter: int = 0,
        skip_pre_loop: bool = False,
        learner_configs: LearnerConfigs | None = None,
    ) -> AsyncIterator[IterationState]:
        """Run one loop per name in ``learner_names`` (default: the constructor's names)."""
        names = self._names(learner_names)
        models = model_list(model_names)
        self._reset_results()
        configs = _configs_by_position(names, learner_configs)
        lanes = [Lane(learner_id=n, config=c) for n, c in zip(names, configs, strict=True)]

        def check() -> None:
            bad = [n for n in names if not isinstance(n, str) or not n]
            if bad:
                raise ValueError(f"learner_names must be non-empty strings, got {bad!r}")
            if len(set(names)) != len(names):
                raise ValueError(f"learner_names must be unique, got {names}")
            if isinstance(learner_configs, Mapping):
                unknown = sorted(set(map(str, learner_configs)) - set(names))
                if unknown:
                    raise ValueError(f"learner_configs names unknown learners: {unknown}")
                self._check_parallel(len(names), None, what="learner_names")
            else:
                self._check_parallel(len(names), learner_configs, what="learner_names")
            self._check_tasks(max_iter, models, num_predictions)

        return self._run(
            lanes,
            lambda ln: self._lane(ln, models, num_predictions, max_iter, skip_pre_loop),
            check=check,
        )

    teach = deprecated_run(_final_states_by_name)

    @property
    def uncertainty_values_per_iteration(self) -> dict[str, dict[int, float]]:
        """Each learner's uncertainty score by iteration, keyed ``"learner-<name>"``."""
        return {f"learner-{name}": dict(v) for name, v in self._uq_values.items()}


def _configs_by_position(
    names: list[str], configs: LearnerConfigs | None
) -> list[LearnerConfig | None]:
    if configs is None:
        return [None] * len(names)
    if isinstance(configs, Mapping):
        return [configs.get(n) for n in names]
    configs = list(configs)
    return [configs[i] if i < len(configs) else None for i in range(len(names))]
