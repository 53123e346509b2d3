"""The run lifecycle every ``start()`` goes through, and the one iteration skeleton.

A learner family writes its loop as hooks plugged into :meth:`LearnerLoop._iterate`
(what one step produces, what happens between it and the criterion, how the
criterion is judged); ``_run`` wraps one or several such lanes in the tracker
lifecycle: ``on_iteration`` before each yield, ``on_stop`` exactly once with
the reason the run ended.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from rose.config import LearnerConfig
from rose.learner.fanout import TrackerFanout
from rose.learner.lanes import Lane, aclose, merge_lanes
from rose.learner.state import StateRegistry
from rose.tracking import IterationState

#: What a criterion step returns: (should_stop, metric value), or None when a stop
#: was requested while it ran.
Judgement = tuple[bool, float | None] | None


class LearnerLoop:
    """A part of :class:`~rose.learner.Learner`: its lifecycle and loop skeleton."""

    run_id: str
    _fanout: TrackerFanout
    _state: StateRegistry
    _lanes: list[Lane]
    _stop_requested: bool
    _max_iter: int | None
    _tasks: dict[str, Any]
    stop_roles: tuple[str, ...]

    async def _run(
        self,
        lanes: list[Lane],
        loop: Callable[[Lane], AsyncIterator[IterationState]],
        check: Callable[[], None] | None = None,
    ) -> AsyncIterator[IterationState]:
        """The one lifecycle every learner's ``start()`` goes through.

        ``check`` validates the arguments inside the lifecycle, so a run that
        cannot start still reports ``on_stop(None, "error")`` to its trackers.
        """
        self._lanes = lanes
        self._stop_requested = False
        last: IterationState | None = None
        reason = "error"
        source: AsyncIterator[IterationState] | None = None
        try:
            if check is not None:
                check()
            loops = [loop(lane) for lane in lanes]
            source = loops[0] if len(loops) == 1 else merge_lanes(loops)
            async for state in source:
                last = state
                self._fanout.notify(self.run_id, "on_iteration", state)
                yield state
            if self._stop_requested:
                reason = "stopped"
            elif all(lane.end_reason == "criterion_met" for lane in lanes):
                reason = "criterion_met"
            else:
                reason = "max_iter_reached"
        except (GeneratorExit, asyncio.CancelledError, KeyboardInterrupt):
            reason = "stopped"  # the user broke out of the loop, or cancelled it
            raise
        finally:
            try:
                if source is not None:
                    await aclose(source)
            finally:
                final = self._final_state(last)
                self._fanout.notify(self.run_id, "on_stop", final, reason)
                self._fanout.summarize()
                self._state.summarize()

    def _final_state(self, last: IterationState | None) -> IterationState | None:
        """The state on_stop reports: the last one yielded (a family may pick another)."""
        return last

    async def _iterate(
        self,
        lane: Lane,
        max_iter: int,
        skip_pre_loop: bool,
        step: Callable[[int], Awaitable[Any]],
        *,
        record: Callable[[Any], None] | None = None,
        middle: Callable[[int, Any], Awaitable[tuple[Any, bool]]] | None = None,
        criterion_inputs: Callable[[Any], tuple] = lambda produced: (),
        criterion: Callable[[int, Any], Awaitable[Judgement]] | None = None,
        finish: Callable[[IterationState], IterationState] | None = None,
    ) -> AsyncIterator[IterationState]:
        """The iteration skeleton every family's loop follows.

        ``step(iteration)`` runs the family's producing tasks (simulation and
        training, environment and update, a UQ ensemble) and returns what they
        produced; the pre-loop runs it for iteration 0 (``skip_pre_loop``: it
        produced None).  Each iteration then

        - records that into the state: ``record(produced)``, by default each
          result of the list;
        - runs ``middle(iteration, produced)`` if any (active learning), which
          returns ``(result, met)``: the result goes into the state, and ``met``
          (a threshold of its own, UQ's uncertainty) ends the run here;
        - judges the stop criterion: ``criterion(iteration, middle_result)``,
          by default the criterion task on ``criterion_inputs(produced)``;
        - yields the state (through ``finish``, if any) and runs the next step
          with the configuration then in effect.

        A stop request is honoured after each await.
        """
        produced = None if skip_pre_loop else await step(0)
        for i in self._iterations(max_iter):
            if self._stop_requested:
                return
            lane.take_pending_config()
            lane.state.clear()
            if len(self._lanes) <= 1:
                self.clear_state()  # type: ignore[attr-defined]
            if produced is not None:
                if record is not None:
                    record(produced)
                else:
                    self._record_each(lane, produced)

            extra, met = None, False
            if middle is not None:
                extra, met = await middle(i, produced)
                if self._stop_requested:
                    return
                self.extract_state(lane, extra)  # type: ignore[attr-defined]

            metric_value, should_stop = None, met
            if not met:
                if criterion is not None:
                    judged = await criterion(i, extra)
                else:
                    judged = await self._judge(lane, i, criterion_inputs(produced))
                if self._stop_requested or judged is None:
                    return
                should_stop, metric_value = judged

            state = self.build_state(lane, i, metric_value, should_stop)  # type: ignore[attr-defined]
            yield finish(state) if finish is not None else state
            if should_stop:
                lane.end_reason = "criterion_met"
                return
            if self._stop_requested or (max_iter and i == max_iter - 1):
                return

            lane.take_pending_config()
            produced = await step(i + 1)
            if self._stop_requested:
                return

    def _record_each(self, lane: Lane, results: Iterable[Any]) -> None:
        for result in results:
            self.extract_state(lane, result)  # type: ignore[attr-defined]

    async def _judge(self, lane: Lane, iteration: int, inputs: tuple) -> Judgement:
        """The stop criterion task on ``inputs``; never stops when none is registered."""
        if "criterion" not in self._tasks:
            return False, None
        result = await self.submit("criterion", lane, iteration, *inputs)  # type: ignore[attr-defined]
        if self._stop_requested:
            return None
        return self.check_criterion(lane, result)  # type: ignore[attr-defined]

    def _start_sequential(
        self, config: LearnerConfig | None, max_iter: int, skip_pre_loop: bool, skip_step: bool
    ) -> AsyncIterator[IterationState]:
        """One lane of the family's ``_lane`` loop through the lifecycle."""
        self._max_iter = max_iter
        return self._run(
            [Lane(learner_id=None, config=config)],
            lambda ln: self._lane(ln, max_iter, skip_pre_loop, skip_step),  # type: ignore[attr-defined]
            check=lambda: self._check_tasks(max_iter, skip_step),  # type: ignore[attr-defined]
        )

    def _check_max_iter(self, max_iter: int) -> None:
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
            raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
        if max_iter == 0 and not any(r in self._tasks for r in self.stop_roles):
            raise ValueError(
                "max_iter=0 means 'until the stop criterion is met', but no criterion is "
                "registered: pass max_iter=N or decorate a task with @learner.as_stop_criterion"
            )

    @staticmethod
    def _iterations(max_iter: int) -> Iterable[int]:
        return range(max_iter) if max_iter else itertools.count()

    def _check_parallel(
        self, count: int, configs: list | None, what: str = "parallel_learners"
    ) -> None:
        if count < 2:
            raise ValueError(
                f"{what} must be at least 2 (got {count}); for a single learner use the "
                "Sequential learner of this family"
            )
        if configs is not None and len(configs) != count:
            raise ValueError(f"learner_configs has {len(configs)} entries for {count} learners")
