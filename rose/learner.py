"""The learner core shared by every learner family (active, reinforcement, UQ).

It holds what all learners have in common: task registration through
decorators, per-iteration task configuration, submitting tasks to a
``radical.asyncflow.WorkflowEngine``, turning task results into
``IterationState``, the stop criterion, and the one tracker lifecycle
(``on_start`` at ``add_tracker``, ``on_iteration`` before each yield,
``on_stop`` exactly once with the reason the run ended).

A learner family only writes its loop: an async generator over one *lane*
(one sequential learner) that yields IterationState.  ``_run`` wraps lanes in
the lifecycle; parallel learners run several lanes and stream their states as
they arrive.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import numbers
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from radical.asyncflow import WorkflowEngine

from rose import metrics
from rose.config import LearnerConfig, Schedule, TaskConfig
from rose.events import make_origin, new_run_id
from rose.tracking import (
    CriterionManifest,
    EventContext,
    IterationState,
    PipelineManifest,
    TaskManifest,
    TrackerBase,
    delivering,
)

log = logging.getLogger(__name__)

__all__ = [
    "IterationState",
    "Learner",
    "LearnerConfig",
    "Metrics",
    "ParallelLearner",
    "Schedule",
    "TaskConfig",
]

#: ROSE 0.3 spelling of the metric names class.
Metrics = metrics.LearningMetrics


@dataclass
class _Task:
    role: str
    func: Callable[..., Any]
    as_executable: bool
    log_params: dict[str, Any]
    decor_kwargs: dict[str, Any]
    flow: Callable[..., Any]
    metric_name: str = ""
    threshold: float = 0.0
    operator: str = ""

    def manifest(self) -> TaskManifest:
        common = dict(
            func_name=getattr(self.func, "__name__", repr(self.func)),
            func_module=getattr(self.func, "__module__", "") or "",
            as_executable=self.as_executable,
            decor_kwargs=dict(self.decor_kwargs),
            log_params=dict(self.log_params),
        )
        if self.role == "criterion":
            return CriterionManifest(
                **common,
                metric_name=self.metric_name,
                threshold=self.threshold,
                operator=self.operator,
            )
        return TaskManifest(**common)


@dataclass
class Lane:
    """One sequential learner's running state (a parallel learner has several)."""

    learner_id: int | str | None
    config: LearnerConfig | None = None
    pending_config: LearnerConfig | None = None
    state: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    end_reason: str = "max_iter_reached"

    def take_pending_config(self) -> None:
        if self.pending_config is not None:
            self.config, self.pending_config = self.pending_config, None


class _TrackerErrors:
    """Logs a tracker's first failure per callback with its traceback; counts the rest."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, str], int] = {}

    def record(self, tracker: Any, method: str) -> None:
        key = (id(tracker), method)
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        if n == 1:
            log.exception(
                "tracker %s raised in %s; the learner and other trackers continue "
                "(further failures of this callback are counted, not logged)",
                type(tracker).__name__,
                method,
            )

    def summarize(self, trackers: list[Any]) -> None:
        for t in trackers:
            for method in ("on_start", "on_iteration", "on_stop"):
                n = self.counts.get((id(t), method), 0)
                if n > 1:
                    log.warning("tracker %s raised %d times in %s", type(t).__name__, n, method)


def task_decorator(role: str, doc: str | None = None) -> Callable:
    """A learner method that registers the ``role`` task, used bare or called with options."""

    def register(self: Learner, _func: Callable | None = None, **options: Any) -> Callable:
        return self._decorator(role, _func, options)

    register.__name__ = register.__qualname__ = f"{role}_task"
    register.__doc__ = doc or (
        f"Register the {role} task: ``as_executable`` (default True), ``log_params`` "
        "(the only thing trackers see), any other keyword goes to the execution backend."
    )
    return register


class Learner:
    """Base of every learner: tasks, configuration, tracking lifecycle.

    The base class also serves custom loops: decorate tasks, call them to
    submit (awaiting one gives its result; awaiting the stop criterion gives
    ``(should_stop, value)``), and share values through the state registry.
    """

    #: Which learner of a parallel run this is (None for a sequential one).
    learner_id: int | str | None = None
    #: Roles this family's loop uses, in pipeline order (for the manifest).
    roles: tuple[str, ...] = ()
    #: Roles whose threshold can end a run, so that ``max_iter=0`` is allowed.
    stop_roles: tuple[str, ...] = ("criterion",)

    simulation_task = task_decorator("simulation")
    training_task = task_decorator("training")
    active_learn_task = task_decorator("active_learn")
    prediction_task = task_decorator("prediction")

    def __init__(
        self,
        asyncflow: WorkflowEngine,
        register_and_submit: bool = True,
        *,
        run_name: str | None = None,
    ) -> None:
        self.asyncflow = asyncflow
        #: False: calling a decorated task runs its function here instead of submitting it.
        self.register_and_submit = bool(register_and_submit)
        self.run_id = new_run_id(run_name)
        #: Criterion values by iteration (of a sequential run, or of criterion calls).
        self.metric_values_per_iteration: dict[int, float] = {}
        #: The next iteration a hand-called stop criterion records under.
        self.iteration = 0
        self._state_registry: dict[str, Any] = {}
        self._state_callbacks: list[Callable[[str, Any], None]] = []
        self._callback_errors: dict[int, int] = {}
        self._current_state: IterationState | None = None
        self._max_iter: int | None = None
        self._tasks: dict[str, _Task] = {}
        self._trackers: list[Any] = []
        self._tracker_errors = _TrackerErrors()
        self._stop_requested = False
        self._lanes: list[Lane] = []
        self._seq = 0
        self._start_ts: float | None = None
        self._origin: dict[str, Any] | None = None
        backend = getattr(asyncflow, "backend", None)
        self._dask_keys = type(backend).__name__.startswith("Dask")
        from rose.pilot import adapt  # RADICAL-Pilot: task requirements, dead-pilot errors

        adapt(asyncflow)
        self._key_token = uuid.uuid4().hex[:12]
        self._submitted = 0

    # ------------------------------------------------------------ tasks

    @property
    def engine(self) -> WorkflowEngine:
        return self.asyncflow

    @property
    def is_stopped(self) -> bool:
        return self._stop_requested

    def _function_view(self, role: str) -> dict[str, Any]:
        """A registered task as ROSE 0.3's ``<role>_function`` dict ({} if none)."""
        task = self._tasks.get(role)
        if task is None:
            return {}
        view = {
            "func": task.func,
            "args": (),
            "kwargs": {},
            "decor_kwargs": dict(task.decor_kwargs),
            "log_params": dict(task.log_params),
            "as_executable": task.as_executable,
        }
        if role == "criterion":
            view.update(
                metric_name=task.metric_name, threshold=task.threshold, operator=task.operator
            )
        return view

    simulation_function = property(lambda self: self._function_view("simulation"))
    training_function = property(lambda self: self._function_view("training"))
    active_learn_function = property(lambda self: self._function_view("active_learn"))
    prediction_function = property(lambda self: self._function_view("prediction"))
    criterion_function = property(lambda self: self._function_view("criterion"))

    def register_decorator(self, task_attr_name: str) -> Callable:
        """A decorator (bare or with options) registering tasks as ``task_attr_name``."""
        return task_decorator(task_attr_name).__get__(self)

    def _decorator(
        self, role: str, func: Callable | None, options: dict[str, Any], **criterion: Any
    ) -> Callable:
        def register(f: Callable) -> Callable:
            return self.register_task(role, f, **options, **criterion)

        return register(func) if func is not None else register

    def register_task(
        self,
        role: str,
        func: Callable,
        *,
        as_executable: bool = True,
        log_params: dict[str, Any] | None = None,
        metric_name: str = "",
        threshold: float = 0.0,
        operator: str = "",
        **decor_kwargs: Any,
    ) -> Callable:
        """Register ``func`` as this learner's ``role`` task.

        ``log_params`` is the only thing trackers see; every other keyword is
        handed to the execution backend as the task description and never
        leaves this process.  Returns a callable that submits the task.
        """
        if not callable(func):
            raise TypeError(f"{role} task must decorate a function, got {type(func).__name__}")
        if log_params is not None and not isinstance(log_params, dict):
            raise TypeError("log_params must be a dict")
        runnable = func if asyncio.iscoroutinefunction(func) else _as_coroutine_function(func)
        decorate = self.asyncflow.executable_task if as_executable else self.asyncflow.function_task
        task = _Task(
            role=role,
            func=func,
            as_executable=bool(as_executable),
            log_params=dict(log_params or {}),
            decor_kwargs=dict(decor_kwargs),
            flow=decorate(runnable),
            metric_name=metric_name,
            threshold=threshold,
            operator=operator,
        )
        self._tasks[role] = task
        return self._handle(task)

    def _handle(self, task: _Task) -> Callable:
        """What a decorator returns: calling it submits the task with the call's arguments."""
        func = task.func

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.register_and_submit:
                return func(*args, **kwargs)
            return self._submit(task, TaskConfig.model_construct(args=args, kwargs=kwargs))

        if task.role == "criterion":
            run = call

            async def call(*args: Any, **kwargs: Any) -> tuple[bool, float]:  # type: ignore[misc]
                result = run(*args, **kwargs)
                if asyncio.isfuture(result) or asyncio.iscoroutine(result):
                    result = await result
                value = _metric_value(result, task.metric_name)
                self.metric_values_per_iteration[self.iteration] = value
                self.iteration += 1
                return metrics.compare(value, task.threshold, task.operator), value

        functools.update_wrapper(call, func)
        return call

    def as_stop_criterion(
        self,
        metric_name: str,
        threshold: float,
        operator: str = "",
        as_executable: bool = True,
        **options: Any,
    ) -> Callable[[Callable], Callable]:
        """Register the task whose numeric result decides when the loop stops."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
        op = metrics.resolve_operator(metric_name, operator)
        return self._decorator(
            "criterion",
            None,
            {"as_executable": as_executable, **options},
            metric_name=metric_name,
            threshold=float(threshold),
            operator=op,
        )

    def utility_task(self, _func: Callable | None = None, **options: Any) -> Callable:
        def register(f: Callable) -> Callable:
            return self.register_task(f"utility.{f.__name__}", f, **options)

        return register(_func) if _func is not None else register

    def _submit(self, task: _Task, config: TaskConfig | None, *deps: Any) -> Any:
        config = config or TaskConfig()
        args = (*config.args, *deps)
        description = dict(task.decor_kwargs)
        if self._dask_keys:
            # rhapsody keys Dask tasks by a per-process counter, so two learners sharing
            # a scheduler would receive each other's results: make keys unique per learner.
            self._submitted += 1
            description.setdefault("key", f"rose-{task.role}-{self._key_token}-{self._submitted}")
        return task.flow(*args, task_description=description, **config.kwargs)

    def submit(self, role: str, lane: Lane, iteration: int, *deps: Any) -> Any:
        """Submit the ``role`` task with the lane's configuration for ``iteration``."""
        config = lane.config.task_config(role, iteration) if lane.config else None
        return self._submit(self._tasks[role], config, *deps)

    def has_task(self, role: str) -> bool:
        return role in self._tasks

    # ------------------------------------------------------------ results

    def extract_state(self, lane: Lane, result: Any) -> None:
        """Merge a task result into the lane's state: dicts, or a JSON object line from stdout."""
        if isinstance(result, str):
            result = _json_object_from_stdout(result)
        if isinstance(result, dict):
            for k, v in result.items():
                lane.state[str(k)] = v
                self.register_state(str(k), v)

    def check_criterion(
        self, lane: Lane, result: Any, role: str = "criterion"
    ) -> tuple[bool, float]:
        """Read a threshold task's result as a number and compare it to its threshold.

        ``role`` is the criterion, or another task registered with a metric
        (the UQ learners' uncertainty task).
        """
        crit = self._tasks[role]
        value = _metric_value(result, crit.metric_name)
        if isinstance(result, dict):
            self.extract_state(lane, result)
        return metrics.compare(value, crit.threshold, crit.operator), value

    def build_state(
        self, lane: Lane, iteration: int, metric_value: float | None, should_stop: bool
    ) -> IterationState:
        crit = self._tasks.get("criterion")
        if metric_value is not None:
            lane.history.append(metric_value)
            if len(self._lanes) <= 1:
                self.metric_values_per_iteration[iteration] = metric_value
                self.iteration = iteration + 1
        # What the user registered by hand, under what the tasks returned.
        single = len(self._lanes) <= 1
        state = {**self._state_registry, **lane.state} if single else dict(lane.state)
        self._current_state = IterationState(
            iteration=iteration,
            metric_name=crit.metric_name if crit else None,
            metric_value=metric_value,
            metric_threshold=crit.threshold if crit else None,
            metric_history=list(lane.history),
            should_stop=should_stop,
            current_config=lane.config,
            learner_id=lane.learner_id,
            state=state,
        )
        return self._current_state

    def build_iteration_state(
        self,
        iteration: int,
        metric_value: float | None = None,
        should_stop: bool = False,
        current_config: LearnerConfig | None = None,
    ) -> IterationState:
        """An IterationState of a custom loop: the criterion, its values so far, the registry."""
        crit = self._tasks.get("criterion")
        return IterationState(
            iteration=iteration,
            metric_name=crit.metric_name if crit else None,
            metric_value=metric_value,
            metric_threshold=crit.threshold if crit else None,
            metric_history=list(self.metric_values_per_iteration.values()),
            should_stop=should_stop,
            current_config=current_config,
            state=self.get_all_state(),
        )

    def compare_metric(
        self, metric_name: str, metric_value: float, threshold: float, operator: str = ""
    ) -> bool:
        """``metric_value`` against ``threshold`` with ``operator``, else the metric's own."""
        op = metrics.resolve_operator(metric_name, operator)
        return metrics.compare(metric_value, threshold, op)

    def get_metric_results(self) -> dict[int, float]:
        """Criterion values by iteration (``metric_values_per_iteration``)."""
        return self.metric_values_per_iteration

    def get_current_state(self) -> IterationState | None:
        """The last IterationState this learner built, or None before the first."""
        return self._current_state

    def get_max_iterations(self) -> int | None:
        """``max_iter`` of the run in progress or last run (0: until the criterion)."""
        return self._max_iter

    # ------------------------------------------------------------ state registry

    def register_state(self, key: str, value: Any) -> None:
        """Publish ``key`` (it shows in the next IterationState) and tell the callbacks."""
        self._state_registry[key] = value
        for callback in list(self._state_callbacks):
            try:
                callback(key, value)
            except Exception:
                n = self._callback_errors.get(id(callback), 0) + 1
                self._callback_errors[id(callback)] = n
                if n == 1:
                    log.exception(
                        "state callback %r raised for %r; the run continues (further "
                        "failures of this callback are counted, and told at the end of the run)",
                        callback,
                        key,
                    )

    def get_state(self, key: str, default: Any = None) -> Any:
        return self._state_registry.get(key, default)

    def get_all_state(self) -> dict[str, Any]:
        return dict(self._state_registry)

    def clear_state(self) -> None:
        self._state_registry.clear()

    def on_state_update(self, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(key, value)`` on every state update, task results included."""
        self._state_callbacks.append(callback)

    def remove_state_callback(self, callback: Callable[[str, Any], None]) -> None:
        if callback in self._state_callbacks:
            self._state_callbacks.remove(callback)

    # ------------------------------------------------------------ schedules

    def create_iteration_schedule(
        self, task_name: str, schedule: dict[int, dict[str, Any]]
    ) -> dict[int, TaskConfig]:
        """``{iteration: {"args": ..., "kwargs": ...}}`` as a schedule of TaskConfigs."""
        return {
            i: TaskConfig(args=tuple(c.get("args", ())), kwargs=dict(c.get("kwargs", {})))
            for i, c in schedule.items()
        }

    def create_adaptive_schedule(
        self,
        task_name: str,
        param_schedule: Callable[[int], dict[str, Any]],
        iterations: int = 100,
    ) -> dict[int, TaskConfig]:
        """``param_schedule(i)`` for the first ``iterations`` iterations, as a schedule."""
        return self.create_iteration_schedule(
            task_name, {i: param_schedule(i) for i in range(iterations)}
        )

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the run to end after the task in flight; on_stop reports 'stopped'."""
        self._stop_requested = True

    def set_next_config(self, config: LearnerConfig, learner_id: int | str | None = None) -> None:
        """Use ``config`` from the next iteration on (for one parallel learner, or all)."""
        for lane in self._lanes:
            if learner_id is None or lane.learner_id == learner_id:
                lane.pending_config = config

    def start(self, *args: Any, **kwargs: Any) -> Any:
        """Each learner family defines its loop; the base Learner has none."""
        raise NotImplementedError(
            f"{type(self).__name__} has no loop of its own: use a learner family "
            "(rose.al, rose.rl, rose.uq) or drive the decorated tasks yourself"
        )

    async def shutdown(self, *args: Any, **kwargs: Any) -> Any:
        """Shut the workflow engine down (existing ROSE scripts end with this)."""
        return await self.asyncflow.shutdown(*args, **kwargs)

    # ------------------------------------------------------------ tracking

    def build_manifest(self) -> PipelineManifest:
        ordered = [r for r in self.roles if r in self._tasks]
        ordered += [r for r in self._tasks if r not in ordered and r != "criterion"]
        crit = self._tasks.get("criterion")
        return PipelineManifest(
            learner_type=type(self).__name__,
            tasks={r: self._tasks[r].manifest() for r in ordered if r != "criterion"},
            criterion=crit.manifest() if crit else None,  # type: ignore[arg-type]
            parallel_count=self.parallel_count,
        )

    @property
    def parallel_count(self) -> int | None:
        return None

    def add_tracker(self, tracker: TrackerBase) -> None:
        """Attach an observer; its ``on_start`` fires now with the pipeline manifest."""
        if not self._tasks:
            warnings.warn(
                f"add_tracker() on {type(self).__name__} before any task is registered: the "
                "tracker's manifest will be empty. Decorate the tasks first, then add trackers.",
                UserWarning,
                stacklevel=2,
            )
        if self._start_ts is None:
            self._start_ts = time.time()
            self._origin = make_origin()
        self._trackers.append(tracker)
        ctx = EventContext(run=self.run_id, seq=0, ts=self._start_ts, origin=self._origin)
        self._call(tracker, "on_start", ctx, self.build_manifest())

    def _call(self, tracker: Any, method: str, ctx: EventContext, *args: Any) -> None:
        callback = getattr(tracker, method, None)
        if callback is None:
            return
        try:
            with delivering(ctx):
                callback(*args)
        except Exception:
            self._tracker_errors.record(tracker, method)

    def _notify(self, method: str, *args: Any) -> None:
        self._seq += 1
        ctx = EventContext(run=self.run_id, seq=self._seq, ts=time.time())
        for tracker in list(self._trackers):
            self._call(tracker, method, ctx, *args)

    # ------------------------------------------------------------ lifecycle

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
            source = loops[0] if len(loops) == 1 else _merge(loops)
            async for state in source:
                last = state
                self._notify("on_iteration", state)
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
                    await _close(source)
            finally:
                self._notify("on_stop", self._final_state(last), reason)
                self._tracker_errors.summarize(self._trackers)
                failed = sum(1 for n in self._callback_errors.values() if n > 1)
                if failed:
                    total = sum(self._callback_errors.values())
                    log.warning("%d state callback(s) raised %d times in all", failed, total)

    def _final_state(self, last: IterationState | None) -> IterationState | None:
        """The state on_stop reports: the last one yielded (a family may pick another)."""
        return last

    async def _iterate(
        self,
        lane: Lane,
        max_iter: int,
        skip_pre_loop: bool,
        step: Callable[[int], Any],
        middle: Callable[[int, list[Any]], Any] | None = None,
        criterion_inputs: Callable[[list[Any]], tuple] = lambda results: (),
    ) -> AsyncIterator[IterationState]:
        """The iteration skeleton every family's loop follows.

        ``step(iteration)`` runs the family's producing tasks (simulation and
        training, environment and update) and returns their results; the
        pre-loop runs it for iteration 0.  Each iteration then records those
        results, runs ``middle`` (e.g. active learning) if any, the criterion on
        ``criterion_inputs(results)``, yields, and runs the next step with the
        configuration then in effect.  A stop request is honoured after each await.
        """
        results: list[Any] = [] if skip_pre_loop else await step(0)
        for i in self._iterations(max_iter):
            if self._stop_requested:
                return
            lane.take_pending_config()
            lane.state.clear()
            if len(self._lanes) <= 1:
                self.clear_state()
            for result in results:
                self.extract_state(lane, result)

            if middle is not None:
                extra = await middle(i, results)
                if self._stop_requested:
                    return
                self.extract_state(lane, extra)

            metric_value, should_stop = None, False
            if self.has_task("criterion"):
                crit_result = await self.submit("criterion", lane, i, *criterion_inputs(results))
                if self._stop_requested:
                    return
                should_stop, metric_value = self.check_criterion(lane, crit_result)

            yield self.build_state(lane, i, metric_value, should_stop)
            if should_stop:
                lane.end_reason = "criterion_met"
                return
            if self._stop_requested or (max_iter and i == max_iter - 1):
                return

            lane.take_pending_config()
            results = await step(i + 1)
            if self._stop_requested:
                return

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

    @staticmethod
    async def _drain(
        states: AsyncIterator[IterationState], name: str = "teach"
    ) -> dict[Any, IterationState]:
        """Run a start() to its end for the deprecated teach()/learn(): last state per learner."""
        warnings.warn(
            f"{name}() is deprecated; iterate over start() instead", DeprecationWarning, stacklevel=3
        )
        finals: dict[Any, IterationState] = {}
        async for state in states:
            finals[state.learner_id] = state
        return finals

    def _check_max_iter(self, max_iter: int) -> None:
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
            raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
        if max_iter == 0 and not any(r in self._tasks for r in self.stop_roles):
            raise ValueError(
                "max_iter=0 means 'until the stop criterion is met', but no criterion is "
                "registered: pass max_iter=N or decorate a task with @learner.as_stop_criterion"
            )

    @staticmethod
    def _iterations(max_iter: int):
        return range(max_iter) if max_iter else _count()

    def _check_parallel(self, count: int, configs: list | None, what: str = "parallel_learners"):
        if count < 2:
            raise ValueError(
                f"{what} must be at least 2 (got {count}); for a single learner use the "
                "Sequential learner of this family"
            )
        if configs is not None and len(configs) != count:
            raise ValueError(f"learner_configs has {len(configs)} entries for {count} learners")

    def _require(self, *roles: str) -> None:
        missing = [r for r in roles if r not in self._tasks]
        if missing:
            names = ", ".join(f"@learner.{r}_task" for r in missing)
            raise ValueError(f"{type(self).__name__} needs these tasks registered first: {names}")


class ParallelLearner(Learner):
    """What the parallel learners of the active and RL families share: the learner
    count, one lane per learner (``learner_id`` 0, 1, …), and the deprecated teach()."""

    def __init__(
        self,
        asyncflow: WorkflowEngine,
        parallel_learners: int | None = None,
        *,
        run_name: str | None = None,
    ) -> None:
        super().__init__(asyncflow, run_name=run_name)
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

    async def teach(
        self,
        parallel_learners: int = 2,
        max_iter: int = 0,
        skip_pre_loop: bool = False,
        learner_configs: list[LearnerConfig | None] | None = None,
    ) -> list[IterationState | None]:
        """Deprecated: run to the end and return each learner's final state."""
        finals = await self._drain(
            self.start(parallel_learners, max_iter, skip_pre_loop, learner_configs)  # type: ignore[attr-defined]
        )
        return [finals.get(i) for i in range(parallel_learners)]


def _count():
    i = 0
    while True:
        yield i
        i += 1


async def _close(agen: Any) -> None:
    aclose = getattr(agen, "aclose", None)
    if aclose is not None:
        await aclose()


async def _merge(loops: list[AsyncIterator[IterationState]]) -> AsyncIterator[IterationState]:
    """Stream states from several lanes as they arrive; cancel the rest on close or error.

    Each lane waits while its state is handled downstream (trackers, the user's
    loop body), exactly as a sequential run would, so ``set_next_config`` and
    ``stop`` called in the loop body take effect on that lane's next iteration.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(loop: AsyncIterator[IterationState]) -> None:
        try:
            async for state in loop:
                ack = asyncio.get_running_loop().create_future()
                await queue.put(("state", state, ack))
                await ack
        except Exception as exc:
            await queue.put(("error", exc, None))
        else:
            await queue.put(("done", None, None))

    tasks = [asyncio.ensure_future(pump(loop)) for loop in loops]
    remaining = len(tasks)
    try:
        while remaining:
            what, item, ack = await queue.get()
            if what == "error":
                raise item
            if what == "done":
                remaining -= 1
                continue
            try:
                yield item
            finally:
                if not ack.done():
                    ack.set_result(None)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for loop in loops:
            await _close(loop)


def _as_coroutine_function(func: Callable) -> Callable:
    # Not functools.wraps: a wrapper claiming func's __qualname__ would be pickled by
    # reference to func itself, and Dask workers would then run the sync function.
    async def run(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    run.__name__ = getattr(func, "__name__", "task")
    return run


def _json_object_from_stdout(stdout: str) -> dict | None:
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    if lines and lines[-1].lstrip().startswith("{"):
        try:
            obj = json.loads(lines[-1])
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None
    return None


def _metric_value(result: Any, metric_name: str) -> float:
    value = result
    if isinstance(result, dict):
        if metric_name not in result:
            raise ValueError(
                f"stop criterion task returned a dict without the metric {metric_name!r} "
                f"(keys: {sorted(map(str, result))})"
            )
        value = result[metric_name]
    if isinstance(value, str):
        lines = [ln.strip() for ln in value.strip().splitlines() if ln.strip()]
        try:
            return float(lines[-1]) if lines else float("")
        except ValueError:
            raise ValueError(
                f"stop criterion task must produce a number for {metric_name!r}; its output "
                f"ends with {value.strip()[-80:]!r}"
            ) from None
    if isinstance(value, bool) or not _is_number(value):
        raise TypeError(
            f"stop criterion task must produce a number for {metric_name!r}, "
            f"got {type(value).__name__}"
        )
    return float(value)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real)
