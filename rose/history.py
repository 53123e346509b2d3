"""What a run's events say, arranged for people: series per learner, outcome, final values.

Built from events (an event log, a spool, a sink's output), so plots and
summaries read the same thing whatever produced it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rose.eventlog import read_events

_UUID_TAIL = re.compile(r"^(.+-)?([0-9a-f]{32})$")


def short_run(run: str) -> str:
    """``name-<32 hex>`` as ``name-<first 8 hex>…``: the name is what people read."""
    m = _UUID_TAIL.match(run)
    if m is None:
        return run
    return f"{m.group(1) or ''}{m.group(2)[:8]}…"


def run_name(run: str) -> str | None:
    """The ``run_name=`` a learner was given (the run id without its uuid), if any."""
    m = _UUID_TAIL.match(run)
    return m.group(1)[:-1] if m and m.group(1) else None


@dataclass
class Series:
    """One learner's values over iterations."""

    iterations: list[int] = field(default_factory=list)
    metric: list[float | None] = field(default_factory=list)
    keys: dict[str, list[float | None]] = field(default_factory=dict)

    def add(self, body: dict[str, Any]) -> None:
        i = len(self.iterations)
        self.iterations.append(body["iteration"])
        self.metric.append(_number(body.get("metric_value")))
        for key, value in body.get("state", {}).items():
            if _number(value) is not None:
                column = self.keys.setdefault(key, [None] * i)
                column.append(_number(value))
        for column in self.keys.values():
            if len(column) < i + 1:
                column.append(None)


@dataclass
class RunHistory:
    run: str
    learner_type: str = "?"
    metric_name: str | None = None
    threshold: float | None = None
    operator: str | None = None
    reason: str | None = None  # None while the run has not stopped
    started: float | None = None
    ended: float | None = None
    events: int = 0
    learners: dict[Any, Series] = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return sum(len(s.iterations) for s in self.learners.values())

    def final_metrics(self) -> dict[Any, float | None]:
        """Each learner's last reported criterion metric."""
        out = {}
        for lid, series in self.learners.items():
            values = [v for v in series.metric if v is not None]
            out[lid] = values[-1] if values else None
        return out

    def apply(self, event: dict[str, Any]) -> None:
        self.events += 1
        body = event["body"]
        if event["kind"] == "start":
            self.started = event["ts"]
            self.learner_type = body["learner_type"]
            crit = body.get("criterion") or {}
            self.metric_name = crit.get("metric_name")
            self.threshold = crit.get("threshold")
            self.operator = crit.get("operator")
        elif event["kind"] == "iteration":
            self.learners.setdefault(body.get("learner_id"), Series()).add(body)
        else:
            self.reason = body["reason"]
            self.ended = event["ts"]


def histories(events: Iterable[dict[str, Any]]) -> dict[str, RunHistory]:
    """Fold events into one RunHistory per run (in first-seen order), each (run, seq) once."""
    runs: dict[str, RunHistory] = {}
    seen: set[tuple[str, int]] = set()
    for event in events:
        key = (event["run"], event["seq"])
        if key in seen:
            continue
        seen.add(key)
        runs.setdefault(event["run"], RunHistory(run=event["run"])).apply(event)
    return runs


def load(paths: Iterable[str | os.PathLike[str]]) -> dict[str, RunHistory]:
    """RunHistory per run from event-log files (several files may hold one run)."""

    def all_events():
        for path in paths:
            yield from read_events(path)

    return histories(all_events())


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None
