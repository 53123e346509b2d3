"""The base Learner: tasks, results, state, tracking and control, in one object.

Its parts live by job next to it: task registration (``tasks``), the run
lifecycle and iteration skeleton (``loop``), the tracker fan-out
(``fanout``), the state registry (``state``); this module turns task results
into ``IterationState`` and holds what a user calls on a learner.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from radical.asyncflow import WorkflowEngine

from rose import metrics
from rose.config import LearnerConfig, TaskConfig
from rose.events.identity import new_run_id
from rose.learner.fanout import TrackerFanout
from rose.learner.lanes import Lane
from rose.learner.loop import LearnerLoop
from rose.learner.results import json_object_from_stdout, metric_value
from rose.learner.state import StateRegistry
from rose.learner.tasks import TaskRegistry, task_decorator
from rose.tracking import IterationState, PipelineManifest, TrackerBase

#: ROSE 0.3 spelling of the metric names class.
Metrics = metrics.LearningMetrics


class Learner(TaskRegistry, LearnerLoop):
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
        self._state = StateRegistry()
        self._fanout = TrackerFanout()
        self._trackers = self._fanout.trackers  # ROSE 0.3's name for the attached trackers
        self._current_state: IterationState | None = None
        self._max_iter: int | None = None
        self._stop_requested = False
        self._lanes: list[Lane] = []
        self._init_tasks(asyncflow)
        from rose.pilot import adapt  # RADICAL-Pilot: task requirements, dead-pilot errors

        adapt(asyncflow)

    @property
    def engine(self) -> WorkflowEngine:
        return self.asyncflow

    @property
    def is_stopped(self) -> bool:
        return self._stop_requested

    # ------------------------------------------------------------ results

    def extract_state(self, lane: Lane, result: Any) -> None:
        """Merge a task result into the lane's state: dicts, or a JSON object line from stdout."""
        if isinstance(result, str):
            result = json_object_from_stdout(result)
        if isinstance(result, dict):
            values = {str(k): v for k, v in result.items()}
            lane.state.update(values)
            self._state.update(values)

    def check_criterion(
        self, lane: Lane, result: Any, role: str = "criterion"
    ) -> tuple[bool, float]:
        """Read a threshold task's result as a number and compare it to its threshold.

        ``role`` is the criterion, or another task registered with a metric
        (the UQ learners' uncertainty task).
        """
        crit = self._tasks[role]
        value = metric_value(result, crit.metric_name)
        if isinstance(result, dict):
            self.extract_state(lane, result)
        return metrics.compare(value, crit.threshold, crit.operator), value

    def build_state(
        self, lane: Lane, iteration: int, metric_value: float | None, should_stop: bool
    ) -> IterationState:
        crit = self._tasks.get("criterion")
        single = len(self._lanes) <= 1
        if metric_value is not None:
            lane.history.append(metric_value)
            if single:
                self.metric_values_per_iteration[iteration] = metric_value
                self.iteration = iteration + 1
        # What the user registered by hand, under what the tasks returned.
        state = {**self._state.values, **lane.state} if single else dict(lane.state)
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
        self._state.register(key, value)

    def get_state(self, key: str, default: Any = None) -> Any:
        return self._state.values.get(key, default)

    def get_all_state(self) -> dict[str, Any]:
        return dict(self._state.values)

    def clear_state(self) -> None:
        self._state.values.clear()

    def on_state_update(self, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(key, value)`` on every state update, task results included."""
        self._state.add_callback(callback)

    def remove_state_callback(self, callback: Callable[[str, Any], None]) -> None:
        self._state.remove_callback(callback)

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
        self._fanout.add(tracker, self.run_id, self.build_manifest())
