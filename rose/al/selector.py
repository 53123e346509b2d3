"""Algorithm selection: several active-learning algorithms on one pipeline, side by side.

Every algorithm runs its own active-learning loop (simulation, training, that
algorithm's active-learn task, the criterion) at the same time as the others;
its states carry the algorithm's name as ``learner_id``.  When all loops end,
the best algorithm is the one that needed the fewest iterations, ties broken
by the better last criterion value (in the criterion's direction).

One run, tracked like any learner: one ``start`` (a task entry per algorithm,
``active_learn.<name>``), each algorithm's iterations as its own series, and
``on_stop`` with the best algorithm's last state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import aclosing
from typing import Any

from radical.asyncflow import WorkflowEngine

from rose.al.active_learner import ActiveLearner, SequentialActiveLearner
from rose.config import LearnerConfig, TaskConfig
from rose.learner.base import Learner
from rose.learner.lanes import Lane
from rose.tracking import IterationState

__all__ = ["AlgorithmSelector", "Learner", "LearnerConfig", "SequentialActiveLearner", "TaskConfig"]

log = logging.getLogger(__name__)

_PREFIX = "active_learn."


class AlgorithmSelector(ActiveLearner):
    """Runs every registered active-learn algorithm in its own loop and picks the best.

    ``start()`` can be awaited (returns ``{"algorithm_results", "best_algorithm",
    "best_stats"}``) or iterated (``async for state in selector.start(...)``).
    """

    def __init__(
        self, asyncflow: WorkflowEngine, register_and_submit: bool = False, **options: Any
    ) -> None:
        """``register_and_submit`` defaults to False here; ``options``: the
        Learner's keywords (``run_name``)."""
        super().__init__(asyncflow, register_and_submit, **options)
        #: Per algorithm: ``{"iterations": n, "last_result": value}`` (plus ``"error"``).
        self.algorithm_results: dict[str, dict[str, Any]] = {}
        self.best_pipeline_name: str | None = None
        self.best_pipeline_stats: dict[str, Any] | None = None
        self._last_states: dict[str, IterationState] = {}

    # ------------------------------------------------------------ algorithms

    def active_learn_task(
        self, _func: Callable | None = None, *, name: str | None = None, **options: Any
    ) -> Callable:
        """Register one algorithm's active-learn task under ``name`` (default: the function's)."""

        def register(f: Callable) -> Callable:
            algo = name or f.__name__
            if not algo or not isinstance(algo, str):
                raise ValueError(f"an algorithm's name must be a non-empty string, got {algo!r}")
            return self.register_task(_PREFIX + algo, f, **options)

        return register(_func) if _func is not None else register

    @property
    def algorithm_names(self) -> list[str]:
        return [r[len(_PREFIX) :] for r in self._tasks if r.startswith(_PREFIX)]

    @property
    def active_learn_functions(self) -> dict[str, dict[str, Any]]:
        """Each algorithm's task as a ``{"func", "args", "kwargs", ...}`` dict."""
        return {n: self._function_view(_PREFIX + n) for n in self.algorithm_names}

    @property
    def parallel_count(self) -> int | None:
        return len(self._lanes) if self._lanes else (len(self.algorithm_names) or None)

    def submit(self, role: str, lane: Lane, iteration: int, *deps: Any) -> Any:
        if role != "active_learn":
            return super().submit(role, lane, iteration, *deps)
        config = lane.config.task_config("active_learn", iteration) if lane.config else None
        return self._submit(self._tasks[_PREFIX + str(lane.learner_id)], config, *deps)

    def _lane(
        self, lane: Lane, max_iter: int, skip_pre_loop: bool, skip_simulation_step: bool
    ) -> AsyncIterator[IterationState]:
        """The active-learning loop, with the algorithm's result handed to the criterion."""
        picked: list[Any] = [None]

        async def middle(it: int, results: list[Any] | None) -> tuple[Any, bool]:
            picked[0], met = await self._active_learn(lane, it, results)
            return picked[0], met

        return self._iterate(
            lane,
            max_iter,
            skip_pre_loop,
            step=lambda it: self._simulate_and_train(lane, it, skip_simulation_step),
            middle=middle,
            criterion_inputs=lambda results: (picked[0],),
        )

    # ------------------------------------------------------------ run

    def start(
        self,
        max_iter: int = 0,
        skip_pre_loop: bool = False,
        algorithm_configs: dict[str, LearnerConfig] | None = None,
    ) -> SelectorRun:
        """Run every algorithm's loop for up to ``max_iter`` iterations (0: until the criterion).

        ``algorithm_configs`` maps an algorithm's name to its LearnerConfig.
        """
        names = self.algorithm_names
        configs = dict(algorithm_configs or {})
        self._max_iter = max_iter
        self.algorithm_results, self._last_states = {}, {}
        self.best_pipeline_name = self.best_pipeline_stats = None
        lanes = [Lane(learner_id=n, config=configs.get(n)) for n in names]

        def check() -> None:
            if not names:
                raise ValueError(
                    "AlgorithmSelector needs at least one algorithm: "
                    "@selector.active_learn_task(name=...)"
                )
            unknown = sorted(set(configs) - set(names))
            if unknown:
                raise ValueError(
                    f"algorithm_configs names unknown algorithms {unknown}; registered: {names}"
                )
            self._require("simulation", "training")
            self._check_max_iter(max_iter)

        states = self._run(
            lanes, lambda ln: self._algorithm_loop(ln, max_iter, skip_pre_loop), check
        )
        return SelectorRun(self, states)

    async def _algorithm_loop(
        self, lane: Lane, max_iter: int, skip_pre_loop: bool
    ) -> AsyncIterator[IterationState]:
        name = str(lane.learner_id)
        try:
            async with aclosing(self._lane(lane, max_iter, skip_pre_loop, False)) as states:
                async for state in states:
                    self._last_states[name] = state
                    self.algorithm_results[name] = {
                        "iterations": state.iteration + 1,
                        "last_result": (
                            state.metric_value if state.metric_value is not None else math.inf
                        ),
                    }
                    yield state
        except Exception as exc:
            self.algorithm_results[name] = {
                "iterations": 0,
                "last_result": math.inf,
                "error": str(exc),
            }
            raise

    def _final_state(self, last: IterationState | None) -> IterationState | None:
        self._select_best()
        if self.best_pipeline_name is not None:
            return self._last_states.get(self.best_pipeline_name, last)
        return last

    def _select_best(self) -> None:
        ok = {
            n: r
            for n, r in self.algorithm_results.items()
            if "error" not in r and r["iterations"] > 0
        }
        if not ok:
            self.best_pipeline_name = self.best_pipeline_stats = None
            return
        crit = self._tasks.get("criterion")
        op = crit.operator if crit else "<"
        threshold = crit.threshold if crit else 0.0

        def badness(value: float) -> float:
            if math.isinf(value) or math.isnan(value):
                return math.inf
            if op in (">", ">="):
                return -value
            if op in ("==", "="):
                return abs(value - threshold)
            return value

        # Registration order breaks exact ties.
        order = {n: i for i, n in enumerate(self.algorithm_names)}
        best = min(ok, key=lambda n: (ok[n]["iterations"], badness(ok[n]["last_result"]), order[n]))
        self.best_pipeline_name, self.best_pipeline_stats = best, dict(ok[best])
        log.info(
            "best algorithm: %s (%d iteration(s), last criterion value %s)",
            best,
            ok[best]["iterations"],
            ok[best]["last_result"],
        )

    def get_best_algorithm(self) -> tuple[str | None, dict[str, Any] | None]:
        """The best algorithm's name and stats, or (None, None) before a run ended."""
        return self.best_pipeline_name, self.best_pipeline_stats

    def get_all_results(self) -> dict[str, dict[str, Any]]:
        return {n: dict(r) for n, r in self.algorithm_results.items()}

    def summary(self) -> dict[str, Any]:
        """What awaiting ``start()`` returns."""
        return {
            "algorithm_results": self.get_all_results(),
            "best_algorithm": self.best_pipeline_name,
            "best_stats": self.best_pipeline_stats,
        }


class SelectorRun:
    """One AlgorithmSelector run: iterate it for the states, or await it for the summary."""

    def __init__(self, selector: AlgorithmSelector, states: AsyncIterator[IterationState]) -> None:
        self._selector = selector
        self._states = states

    def __aiter__(self) -> AsyncIterator[IterationState]:
        return self._states

    async def aclose(self) -> None:
        await self._states.aclose()  # type: ignore[attr-defined]

    def __await__(self) -> Generator[Any, None, dict[str, Any]]:
        return self._finish().__await__()

    async def _finish(self) -> dict[str, Any]:
        async with aclosing(self._states) as states:  # type: ignore[type-var]
            async for _ in states:
                pass
        if self._selector.best_pipeline_name is None:
            raise ValueError(
                "no algorithm completed an iteration, so none can be selected: "
                f"results {self._selector.get_all_results()}"
            )
        return self._selector.summary()
