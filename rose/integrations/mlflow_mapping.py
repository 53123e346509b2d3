"""The one mapping from rose events to MLflow: pure, shared by MLflowTracker and the sink.

An event becomes MLflow entities (:class:`RunUpdate`), and a run of
consecutive events becomes a list of :class:`Call` s, each one
``log_batch`` within MLflow's limits that ends with a checkpoint tag.  The
in-process tracker applies one event at a time; the sink applies hundreds
per call.  Because both go through :func:`plan`, an MLflow run has the same
content whichever path filled it.

The layout is ROSE 0.3's (docs/compat.md), so searches and dashboards keyed
on its names keep working; what this project adds is named ``rose.*``:

* params (start): ``learner_type``, ``parallel_learners``,
  ``criterion/metric_name`` / ``criterion/threshold`` / ``criterion/operator``,
  and per task ``task.<task>.as_executable`` and ``task.<task>.<key>`` for
  each ``log_params`` entry; ``None`` is logged as ``"None"``, a nested value
  as its text.  The criterion's own ``as_executable`` and ``log_params`` are
  ``rose.task.criterion.*``.  ``decor_kwargs`` never reach events.
* metrics (iteration), ``step`` = iteration, ``timestamp`` = the event's emit
  time: the criterion metric (``metric`` when it has no name), every numeric
  state value, numeric config kwargs as
  ``config/<task>/<key>`` (see :mod:`rose.integrations.tracked_config`); all
  prefixed ``<learner_id>/`` for parallel learners.
* tags: string config kwargs (same names as the config metrics),
  ``stop_reason``, and ``final_iteration`` when the last state is a
  sequential run's; a parallel run's last state (one learner's) is
  ``rose.final_iteration`` / ``rose.final_learner``.  ``rose.run_id`` and the
  run's origin (``rose.host``, ``rose.pid``, ``rose.version``, ``mlflow.user``).
* status: FINISHED, or FAILED when the stop reason is ``error``; end time =
  the stop event's emit time.

Values, deliberately: bools are metrics 0/1; NaN and ±inf are logged as they
are (MLflow keeps NaN, and its SQL store saves ±inf as ±max double); a size-1
numeric array counts as its element; strings, None, lists, maps, other arrays
and ``Repr`` values in ``state`` are not metrics and are reported in
``RunUpdate.skipped``.  Keys are made valid MLflow names (other characters
become ``_``; ``.``/``..``/empty path segments become ``_``).

Idempotency: every call's last tag is ``rose.next_seq`` = the position after
it (``"N"``: events below seq N applied; ``"N:p"``: the first p calls of
event N, when one event needs several calls).  Timestamps come from the
events, so a call re-applied after a crash writes identical rows, which
MLflow's SQL store treats as already present.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from mlflow.entities import Metric, Param, RunTag

from rose.integrations.tracked_config import config_entries, config_name

RUN_ID_TAG = "rose.run_id"
POSITION_TAG = "rose.next_seq"
RUN_NAME_TAG = "mlflow.runName"
#: A parallel run's last state: its iteration and learner (``final_iteration`` is sequential).
FINAL_ITERATION_TAG = "rose.final_iteration"
FINAL_LEARNER_TAG = "rose.final_learner"

#: MLflow's per-call limits (mlflow.utils.validation).
MAX_METRICS_PER_CALL = 1000
MAX_PARAMS_PER_CALL = 100
MAX_TAGS_PER_CALL = 100
MAX_ENTITIES_PER_CALL = 1000
#: Stay well under MLflow's 1 MB request limit (counted as key + value bytes).
MAX_CALL_BYTES = 800_000
MAX_KEY_CHARS = 250
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000

_BAD_CHARS = re.compile(r"[^\w.\- :/]")
_METRIC_OVERHEAD_BYTES = 48  # value, timestamp, step as JSON, roughly


class Position(NamedTuple):
    """How far an MLflow run holds a rose run: seqs below ``seq``, plus ``part`` calls of ``seq``."""

    seq: int
    part: int = 0

    def tag_value(self) -> str:
        return str(self.seq) if self.part == 0 else f"{self.seq}:{self.part}"

    @classmethod
    def parse(cls, value: str | None) -> Position:
        """Read a ``rose.next_seq`` tag; a missing or unreadable tag means nothing applied."""
        if not value:
            return cls(0)
        seq, _, part = value.partition(":")
        try:
            return cls(max(0, int(seq)), max(0, int(part or 0)))
        except ValueError:
            return cls(0)


START = Position(0)


@dataclass
class RunUpdate:
    """What one event (or a part of one) writes to its MLflow run."""

    metrics: list[Metric] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    #: Terminal status to set (FINISHED / FAILED), with its end time in ms.
    status: str | None = None
    end_time: int | None = None
    #: State keys that were not logged, with the type that kept them out.
    skipped: list[str] = field(default_factory=list)


@dataclass
class Call:
    """One ``log_batch`` (after ``set_terminated`` when ``status`` is set)."""

    metrics: list[Metric]
    params: list[Param]
    tags: list[RunTag]  # the position tag is the last one
    status: str | None
    end_time: int | None
    position: Position
    events: int  # whole events this call completes
    skipped: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- names and values


def mlflow_key(key: str) -> str:
    """A valid MLflow metric/param/tag name for ``key``, as close to it as possible."""
    name = _path_safe(_BAD_CHARS.sub("_", str(key)))
    if len(name) > MAX_KEY_CHARS:
        name = _path_safe(name[:MAX_KEY_CHARS].rstrip("/."))
    return name


def _path_safe(name: str) -> str:
    # MLflow refuses names that a path normalisation would change.
    return "/".join("_" if p in ("", ".", "..") else p for p in name.split("/"))


def numeric(value: Any) -> float | None:
    """``value`` as a metric value, or None when it is not a number."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int too large for a double
            return None
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        return numeric(value.reshape(-1)[0].item())
    return None


def text(value: Any, limit: int) -> str:
    """A param/tag value: ``str`` of it, cut to MLflow's length limit."""
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.size <= 64 else f"array{value.shape} {value.dtype}"
    return str(value)[:limit]


def ms(ts: float) -> int:
    """Event time (unix seconds) as MLflow's milliseconds."""
    return int(round(ts * 1000))


# ---------------------------------------------------------------- per kind


def run_name_for(run: str) -> str:
    """The MLflow run name a rose run gets unless the user names it."""
    return run


def creation_tags(event: dict[str, Any]) -> dict[str, str]:
    """Tags to create an MLflow run with, from the first event seen of its rose run."""
    tags = {RUN_ID_TAG: event["run"]}
    if event["kind"] == "start":
        tags.update({t.key: t.value for t in origin_tags(event.get("origin") or {})})
    return tags


def origin_tags(origin: dict[str, Any]) -> list[RunTag]:
    tags = []
    for field_name, tag in (("host", "rose.host"), ("pid", "rose.pid"), ("rose", "rose.version")):
        if origin.get(field_name) is not None:
            tags.append(RunTag(tag, text(origin[field_name], MAX_TAG_CHARS)))
    if origin.get("user") is not None:
        tags.append(RunTag("mlflow.user", text(origin["user"], MAX_TAG_CHARS)))
    return tags


def manifest_params(body: dict[str, Any]) -> list[Param]:
    """The run's params from a start event's manifest body."""
    crit = body.get("criterion")
    params: dict[str, Any] = {
        "learner_type": body.get("learner_type"),
        "parallel_learners": body.get("parallel_count"),
        "criterion/metric_name": crit.get("metric_name") if crit else None,
        "criterion/threshold": crit.get("threshold") if crit else None,
        "criterion/operator": crit.get("operator") if crit else None,
    }
    tasks = [(f"task.{name}", task) for name, task in (body.get("tasks") or {}).items()]
    if crit:
        tasks.append(("rose.task.criterion", crit))
    for prefix, task in tasks:
        params[f"{prefix}.as_executable"] = task.get("as_executable")
        for key, value in (task.get("log_params") or {}).items():
            params[f"{prefix}.{key}"] = value
    out: dict[str, Param] = {}
    for key, value in params.items():
        name = mlflow_key(key)
        out.setdefault(name, Param(name, text(value, MAX_PARAM_CHARS)))
    return list(out.values())


def iteration_entities(
    body: dict[str, Any], timestamp: int
) -> tuple[list[Metric], list[RunTag], list[str]]:
    """Metrics and tags of one iteration body (also used for a stop's final state)."""
    step = int(body["iteration"])
    lid = body.get("learner_id")
    prefix = "" if lid is None else f"{lid}/"
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    skipped: list[str] = []

    value = numeric(body.get("metric_value"))
    if value is not None:
        metrics[mlflow_key(prefix + (body.get("metric_name") or "metric"))] = value
    for key, value in (body.get("state") or {}).items():
        number = numeric(value)
        if number is None:
            skipped.append(f"{prefix}{key}: {type(value).__name__}")
            continue
        metrics.setdefault(mlflow_key(prefix + key), number)
    for role, key, value in config_entries(body.get("current_config")):
        k = mlflow_key(config_name(role, key, prefix))
        number = numeric(value)
        if number is not None:
            metrics.setdefault(k, number)
        elif isinstance(value, str):
            tags[k] = value[:MAX_TAG_CHARS]
    return (
        [Metric(k, v, timestamp, step) for k, v in metrics.items()],
        [RunTag(k, v) for k, v in tags.items()],
        skipped,
    )


def final_tags(final: dict[str, Any] | None) -> list[RunTag]:
    """Where the run ended: ``final_iteration`` of a sequential run, ``rose.*`` of a parallel one."""
    if final is None:
        return []
    iteration = str(final["iteration"])
    if final.get("learner_id") is None:
        return [RunTag("final_iteration", iteration)]
    return [
        RunTag(FINAL_ITERATION_TAG, iteration),
        RunTag(FINAL_LEARNER_TAG, text(final["learner_id"], MAX_TAG_CHARS)),
    ]


def event_update(event: dict[str, Any]) -> RunUpdate:
    """Everything one event writes to its MLflow run (the position tag excepted)."""
    kind, body = event["kind"], event["body"]
    if kind == "start":
        tags = [RunTag(RUN_ID_TAG, event["run"]), *origin_tags(event.get("origin") or {})]
        return RunUpdate(params=manifest_params(body), tags=tags)
    if kind == "iteration":
        metrics, tags, skipped = iteration_entities(body, ms(event["ts"]))
        return RunUpdate(metrics=metrics, tags=tags, skipped=skipped)
    reason = body["reason"]
    tags = [RunTag("stop_reason", reason), *final_tags(body.get("final_state"))]
    return RunUpdate(
        tags=tags,
        status="FAILED" if reason == "error" else "FINISHED",
        end_time=ms(event["ts"]),
    )


# ---------------------------------------------------------------- batching


def _size(update: RunUpdate) -> int:
    n = sum(len(m.key) + _METRIC_OVERHEAD_BYTES for m in update.metrics)
    n += sum(len(p.key) + len(p.value) for p in update.params)
    return n + sum(len(t.key) + len(t.value) for t in update.tags)


def _fits(metrics: int, params: int, tags: int, size: int) -> bool:
    # One tag and its bytes are kept free for the position tag.
    return (
        metrics <= MAX_METRICS_PER_CALL
        and params <= MAX_PARAMS_PER_CALL
        and tags <= MAX_TAGS_PER_CALL - 1
        and metrics + params + tags <= MAX_ENTITIES_PER_CALL - 1
        and size <= MAX_CALL_BYTES
    )


def split(update: RunUpdate) -> list[RunUpdate]:
    """Cut one event's update into parts that each fit a call; the same parts every time."""
    if _fits(len(update.metrics), len(update.params), len(update.tags), _size(update)):
        return [update]
    parts: list[RunUpdate] = []
    current = RunUpdate()
    size = 0
    items: list[tuple[str, Any]] = [
        *(("params", p) for p in update.params),
        *(("tags", t) for t in update.tags),
        *(("metrics", m) for m in update.metrics),
    ]
    for kind, item in items:
        item_size = _size(RunUpdate(**{kind: [item]}))
        counts = [len(current.metrics), len(current.params), len(current.tags)]
        counts[("metrics", "params", "tags").index(kind)] += 1
        if not _fits(*counts, size + item_size) and (
            current.metrics or current.params or current.tags
        ):
            parts.append(current)
            current, size = RunUpdate(), 0
        getattr(current, kind).append(item)
        size += item_size
    parts.append(current)
    parts[-1].status, parts[-1].end_time = update.status, update.end_time
    parts[-1].skipped = update.skipped
    return parts


def plan(events: Iterable[dict[str, Any]], after: Position = START) -> list[Call]:
    """The calls that bring an MLflow run from position ``after`` through ``events``.

    ``events`` are consecutive events of one run in seq order; those before
    ``after`` are left out.  Whole events are packed together up to MLflow's
    limits; an event too big for one call gets calls of its own.
    """
    calls: list[Call] = []
    group: list[RunUpdate] = []
    counts = [0, 0, 0, 0]  # metrics, params, tags, bytes of the open group
    next_seq = after.seq
    events_in_group = 0

    def close_group() -> None:
        nonlocal group, counts, events_in_group
        if events_in_group:
            calls.append(_merge(group, Position(next_seq), events_in_group))
        group, counts, events_in_group = [], [0, 0, 0, 0], 0

    for event in events:
        seq = event["seq"]
        if seq < after.seq:
            continue
        parts = split(event_update(event))
        skip_parts = after.part if seq == after.seq else 0
        if len(parts) > 1:
            close_group()
            for i, part in enumerate(parts):
                if i < skip_parts:
                    continue
                last = i == len(parts) - 1
                pos = Position(seq + 1) if last else Position(seq, i + 1)
                calls.append(_merge([part], pos, 1 if last else 0))
            next_seq = seq + 1
            continue
        (update,) = parts
        grown = [
            counts[0] + len(update.metrics),
            counts[1] + len(update.params),
            counts[2] + len(update.tags),
            counts[3] + _size(update),
        ]
        if not _fits(*grown):
            close_group()
            grown = [len(update.metrics), len(update.params), len(update.tags), _size(update)]
        group.append(update)
        counts = grown
        events_in_group += 1
        next_seq = seq + 1
    close_group()
    return calls


def _merge(updates: list[RunUpdate], position: Position, events: int) -> Call:
    metrics: list[Metric] = []
    params: dict[str, Param] = {}
    tags: dict[str, RunTag] = {}
    status = end_time = None
    skipped: list[str] = []
    for u in updates:
        metrics.extend(u.metrics)
        skipped.extend(u.skipped)
        for p in u.params:
            params.setdefault(p.key, p)
        for t in u.tags:
            tags.pop(t.key, None)  # a later value wins, in its own place
            tags[t.key] = t
        if u.status is not None:
            status, end_time = u.status, u.end_time
    tag_list = [*tags.values(), RunTag(POSITION_TAG, position.tag_value())]
    return Call(
        metrics, list(params.values()), tag_list, status, end_time, position, events, skipped
    )
