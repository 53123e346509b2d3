"""Task and learner configuration: what each task is called with, per iteration.

These are pydantic models (keyword-only, ``model_dump``/``model_validate``),
as in ROSE 0.3, so configurations written for ROSE load unchanged.  The event
model holds a configuration as plain data: :func:`config_snapshot` resolves
it for one iteration, :func:`config_from_snapshot` rebuilds a configuration
from such data (a replayed run's ``IterationState.current_config``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from rose.events.values import to_plain


class TaskConfig(BaseModel):
    """Arguments for one task call: ``args`` come first, dependencies are appended."""

    model_config = ConfigDict(extra="forbid")

    args: tuple = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)


#: A task's configuration: one TaskConfig for every iteration, or a schedule
#: ``{iteration: TaskConfig}``: the exact iteration's entry, else the entry under
#: ``-1`` (or ``"default"``), else none.  Keys read from JSON ("3") become ints.
Schedule = TaskConfig | dict[int | Literal["default"], TaskConfig] | None


def _lookup(schedule: Any, iteration: int) -> TaskConfig | None:
    if schedule is None or isinstance(schedule, TaskConfig):
        return schedule
    if iteration in schedule:
        return schedule[iteration]
    fallback = schedule.get(-1)
    return fallback if fallback is not None else schedule.get("default")


class LearnerConfig(BaseModel):
    """Per-task configurations of a learner, each a TaskConfig or a schedule."""

    model_config = ConfigDict(extra="forbid")

    simulation: Schedule = None
    training: Schedule = None
    prediction: Schedule = None
    active_learn: Schedule = None
    environment: Schedule = None
    update: Schedule = None
    criterion: Schedule = None

    def get_task_config(self, task_name: str, iteration: int) -> TaskConfig | None:
        """The TaskConfig in effect for ``task_name`` at ``iteration``, or None."""
        return _lookup(_schedule_of(self, task_name), iteration)

    # This project's earlier spelling.
    task_config = get_task_config


def _schedule_of(config: BaseModel, role: str) -> Any:
    if role in type(config).model_fields:
        return getattr(config, role)
    return (config.model_extra or {}).get(role)


def _roles(config: BaseModel) -> list[str]:
    return [*type(config).model_fields, *(config.model_extra or {})]


def config_snapshot(config: Any, iteration: int) -> dict[str, Any]:
    """``{role: {"args": [...], "kwargs": {...}}}`` in effect at ``iteration``, as plain data."""
    if config is None:
        return {}
    if isinstance(config, dict):  # already plain data
        return to_plain(config)
    if isinstance(config, _RecordedConfig):  # read from an event: give back exactly that
        return to_plain(config._snapshot)
    snap: dict[str, Any] = {}
    for role in _roles(config):
        cfg = _lookup(_schedule_of(config, role), iteration)
        if cfg is not None:
            snap[role] = {"args": to_plain(list(cfg.args)), "kwargs": to_plain(cfg.kwargs)}
    return snap


class _RecordedConfig(LearnerConfig):
    """A configuration read back from an event: any task name, one TaskConfig each."""

    model_config = ConfigDict(extra="allow")
    _snapshot: dict[str, Any] = PrivateAttr(default_factory=dict)


def config_from_snapshot(snapshot: dict[str, Any]) -> LearnerConfig | None:
    """The configuration a :func:`config_snapshot` describes (None for an empty one).

    Built without validation: the snapshot was checked as plain data already,
    and replay rebuilds one per iteration.
    """
    if not snapshot:
        return None
    fields = {}
    for role, entry in snapshot.items():
        entry = entry if isinstance(entry, dict) else {}
        args = entry.get("args") or ()
        kwargs = entry.get("kwargs") or {}
        fields[role] = TaskConfig.model_construct(
            args=tuple(args) if isinstance(args, (list, tuple)) else (args,),
            kwargs=kwargs if isinstance(kwargs, dict) else {},
        )
    known = {r: fields.pop(r) for r in list(fields) if r in LearnerConfig.model_fields}
    config = _RecordedConfig.model_construct(**known, **fields)
    config._snapshot = snapshot
    return config
