"""Task registration: the decorators, the registered task, and submitting it.

A decorated function becomes a ``RegisteredTask``: its role in the loop, the
radical.asyncflow task it is submitted as, what trackers may see of it
(``log_params``) and, for threshold tasks, its metric.  Calling what a
decorator returns submits the task (or, with ``register_and_submit=False``,
runs the function here).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radical.asyncflow import WorkflowEngine

from rose import metrics
from rose.config import TaskConfig
from rose.learner.lanes import Lane
from rose.learner.results import metric_value
from rose.tracking import CriterionManifest, TaskManifest


@dataclass
class RegisteredTask:
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


def task_decorator(role: str, doc: str | None = None) -> Callable:
    """A learner method that registers the ``role`` task, used bare or called with options."""

    def register(self: TaskRegistry, _func: Callable | None = None, **options: Any) -> Callable:
        return self._decorator(role, _func, options)

    register.__name__ = register.__qualname__ = f"{role}_task"
    register.__doc__ = doc or (
        f"Register the {role} task: ``as_executable`` (default True), ``log_params`` "
        "(the only thing trackers see), any other keyword goes to the execution backend."
    )
    return register


class TaskRegistry:
    """The learner's registered tasks, by role, and how they are submitted.

    A part of :class:`~rose.learner.Learner`; it keeps the criterion values of
    hand-called stop criteria in the learner's ``metric_values_per_iteration``.
    """

    asyncflow: WorkflowEngine
    register_and_submit: bool
    metric_values_per_iteration: dict[int, float]
    iteration: int

    def _init_tasks(self, asyncflow: WorkflowEngine) -> None:
        self._tasks: dict[str, RegisteredTask] = {}
        backend = getattr(asyncflow, "backend", None)
        self._dask_keys = type(backend).__name__.startswith("Dask")
        self._key_token = uuid.uuid4().hex[:12]
        self._submitted = 0

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
        task = RegisteredTask(
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

    def _handle(self, task: RegisteredTask) -> Callable:
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
                value = metric_value(result, task.metric_name)
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

    def _submit(self, task: RegisteredTask, config: TaskConfig | None, *deps: Any) -> Any:
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

    def _require(self, *roles: str) -> None:
        missing = [r for r in roles if r not in self._tasks]
        if missing:
            names = ", ".join(f"@learner.{r}_task" for r in missing)
            raise ValueError(f"{type(self).__name__} needs these tasks registered first: {names}")


def _as_coroutine_function(func: Callable) -> Callable:
    # Not functools.wraps: a wrapper claiming func's __qualname__ would be pickled by
    # reference to func itself, and Dask workers would then run the sync function.
    async def run(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    run.__name__ = getattr(func, "__name__", "task")
    return run
