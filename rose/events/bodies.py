"""Bodies: tracker callback arguments <-> event bodies, and the events made from them.

``decor_kwargs`` never enter a body (they may hold secrets); ``metric_history``
is left out and rebuilt from the run's own iterations.
"""

from __future__ import annotations

from typing import Any

from rose.events.schema import SCHEMA_VERSION, EventError
from rose.events.values import to_plain
from rose.tracking import (
    CriterionManifest,
    EventContext,
    IterationState,
    PipelineManifest,
    TaskManifest,
)


def manifest_to_body(manifest: PipelineManifest) -> dict[str, Any]:
    def task(t: TaskManifest) -> dict[str, Any]:
        # decor_kwargs are deliberately absent: they may hold secrets.
        return {
            "func_name": t.func_name,
            "func_module": t.func_module,
            "as_executable": bool(t.as_executable),
            "log_params": to_plain(dict(t.log_params or {})),
        }

    criterion = None
    if manifest.criterion is not None:
        c = manifest.criterion
        criterion = {
            **task(c),
            "metric_name": c.metric_name,
            "threshold": to_plain(c.threshold),
            "operator": c.operator,
        }
    return {
        "learner_type": manifest.learner_type,
        "parallel_count": manifest.parallel_count,
        "tasks": {name: task(t) for name, t in manifest.tasks.items()},
        "criterion": criterion,
    }


def config_snapshot(config: Any, iteration: int) -> dict[str, Any]:
    """A state's ``current_config`` as plain data (pydantic loads only when one is set)."""
    if config is None:
        return {}
    from rose.config import config_snapshot as snapshot

    return snapshot(config, iteration)


def config_from_snapshot(snapshot: dict[str, Any]) -> Any:
    """The LearnerConfig an event's ``current_config`` describes, or None if empty."""
    if not snapshot:
        return None
    from rose.config import config_from_snapshot as rebuild

    return rebuild(snapshot)


def _state_config(state: IterationState) -> dict[str, Any]:
    """The state's config snapshot, made once per state for all the trackers that see it."""
    config = state.current_config
    if config is None:
        return {}
    key = (id(config), state.iteration)
    cached = state.__dict__.get("_config_snapshot")
    if cached is None or cached[0] != key:
        cached = state.__dict__["_config_snapshot"] = (key, config_snapshot(config, state.iteration))
    return cached[1]


def state_to_body(state: IterationState) -> dict[str, Any]:
    # metric_history is left out: it is rebuilt from the run's own iterations.
    return {
        "iteration": state.iteration,
        "learner_id": state.learner_id,
        "metric_name": state.metric_name,
        "metric_value": to_plain(state.metric_value),
        "metric_threshold": to_plain(state.metric_threshold),
        "should_stop": bool(state.should_stop),
        "current_config": _state_config(state),
        "state": to_plain(state.state),
    }


def _need(body: dict, key: str, types: type | tuple, what: str) -> Any:
    if key not in body:
        raise EventError(f"{what}: missing field {key!r}")
    value = body[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise EventError(f"{what}: field {key!r} has type {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))


def _task_from(name: str, d: Any, cls: type = TaskManifest, **extra: Any) -> TaskManifest:
    what = f"task {name!r}"
    if not isinstance(d, dict):
        raise EventError(f"{what}: expected a map")
    return cls(
        func_name=_need(d, "func_name", str, what),
        func_module=_need(d, "func_module", str, what),
        as_executable=_need(d, "as_executable", bool, what),
        decor_kwargs={},
        log_params=_need(d, "log_params", dict, what),
        **extra,
    )


def manifest_from_body(body: dict[str, Any]) -> PipelineManifest:
    what = "start body"
    tasks = _need(body, "tasks", dict, what)
    crit = body.get("criterion")
    criterion = None
    if crit is not None:
        if not isinstance(crit, dict):
            raise EventError("criterion: expected a map")
        criterion = _task_from(
            "criterion",
            crit,
            CriterionManifest,
            metric_name=_need(crit, "metric_name", str, "criterion"),
            threshold=_need(crit, "threshold", _NUM, "criterion"),
            operator=_need(crit, "operator", str, "criterion"),
        )
    parallel = body.get("parallel_count")
    if parallel is not None and (not isinstance(parallel, int) or isinstance(parallel, bool)):
        raise EventError("start body: parallel_count must be an int or null")
    return PipelineManifest(
        learner_type=_need(body, "learner_type", str, what),
        tasks={str(k): _task_from(str(k), v) for k, v in tasks.items()},
        criterion=criterion,
        parallel_count=parallel,
    )


def state_from_body(body: Any, history: list[float] | None = None) -> IterationState:
    what = "iteration body"
    if not isinstance(body, dict):
        raise EventError(f"{what}: expected a map")
    learner_id = body.get("learner_id")
    if learner_id is not None and not isinstance(learner_id, (int, str)):
        raise EventError(f"{what}: learner_id must be an int, a string or null")
    return IterationState(
        iteration=_need(body, "iteration", int, what),
        learner_id=learner_id,
        metric_name=_need(body, "metric_name", _OPT_STR, what),
        metric_value=_need(body, "metric_value", _OPT_NUM, what),
        metric_threshold=_need(body, "metric_threshold", _OPT_NUM, what),
        metric_history=list(history or []),
        should_stop=_need(body, "should_stop", bool, what),
        current_config=config_from_snapshot(_need(body, "current_config", dict, what)),
        state=_need(body, "state", dict, what),
    )


def make_event(ctx: EventContext, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "run": ctx.run,
        "seq": ctx.seq,
        "kind": kind,
        "ts": ctx.ts,
    }
    if kind == "start":
        event["origin"] = to_plain(ctx.origin or {})
    event["body"] = body
    return event


def start_event(ctx: EventContext, manifest: PipelineManifest) -> dict[str, Any]:
    return make_event(ctx, "start", manifest_to_body(manifest))


def iteration_event(ctx: EventContext, state: IterationState) -> dict[str, Any]:
    return make_event(ctx, "iteration", state_to_body(state))


def stop_event(
    ctx: EventContext, final_state: IterationState | None, reason: str
) -> dict[str, Any]:
    final = state_to_body(final_state) if final_state is not None else None
    return make_event(ctx, "stop", {"reason": reason, "final_state": final})
