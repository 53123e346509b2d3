"""What the parallel learners of the active and RL families share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from radical.asyncflow import WorkflowEngine

from rose.config import LearnerConfig
from rose.learner.base import Learner
from rose.learner.lanes import Lane
from rose.tracking import IterationState


class ParallelLearner(Learner):
    """The learner count, and one lane per learner (``learner_id`` 0, 1, …)."""

    def __init__(
        self, asyncflow: WorkflowEngine, parallel_learners: int | None = None, **options: Any
    ) -> None:
        """``options``: the Learner's keywords (``run_name``)."""
        super().__init__(asyncflow, **options)
        # Known before start() only if given here; the manifest then carries it.
        self._parallel_hint = parallel_learners

    @property
    def parallel_count(self) -> int | None:
        return len(self._lanes) if self._lanes else self._parallel_hint

    def _start_parallel(
        self,
        parallel_learners: int | None,
        max_iter: int,
        skip_pre_loop: bool,
        learner_configs: list[LearnerConfig | None] | None,
        skip_step: bool,
    ) -> AsyncIterator[IterationState]:
        count = parallel_learners or self._parallel_hint or 2
        self._max_iter = max_iter
        configs = learner_configs or [None] * count
        lanes = [
            Lane(learner_id=i, config=configs[i] if i < len(configs) else None)
            for i in range(count)
        ]

        def check() -> None:
            self._check_parallel(count, learner_configs)
            self._check_tasks(max_iter, skip_step)  # type: ignore[attr-defined]

        return self._run(
            lanes,
            lambda ln: self._lane(ln, max_iter, skip_pre_loop, skip_step),  # type: ignore[attr-defined]
            check=check,
        )
