"""What a sink's status file holds: counters, lag, hung calls and its busiest runs.

``rose status`` reads these fields; the runtime rewrites them every
``status_interval_ms``.  Probing the source or the sink for it never stops
the sink.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from sinks.base import Sink
from sinks.runconfig import Counters
from sinks.runstate import RunState
from sinks.sources import EventSource

log = logging.getLogger(__name__)

#: Runs listed in the status file, most recently active first.
STATUS_RUNS_SHOWN = 50
#: Entries of each list (retrying runs, gap reports, losses, hung calls) shown.
STATUS_LIST_SHOWN = 20


class StatusReport:
    """Builds the status of one runtime; remembers its last build for per-run rates."""

    def __init__(self, name: str, sink: Sink, source: EventSource) -> None:
        self.name = name
        self.sink = sink
        self.source = source
        self.started = time.time()
        #: The source's newest offset when last asked (asked while the sink runs).
        self.head: int | None = None
        self._last_t: float | None = None

    def build(self, runs: dict[str, RunState], now: float, *, phase: str,
              store_id: str | None, offset: int, latency_s: float | None, counters: Counters, interval_s: float,
              deadline_s: float, gap_reports: list[dict[str, Any]],
              losses: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
        """The status as plain data; ``offset`` is the next one the sink reads."""
        if phase == "running":
            try:
                self.head = self.source.head_offset()
            except Exception as exc:  # a status probe must never stop the sink
                log.debug("head_offset failed: %s", exc)
        head = self.head
        lag = sum(len(r.pending) for r in runs.values())
        if head is not None:
            lag += max(0, head + 1 - offset)
        shown = sorted(
            (r for r in runs.values() if r.applied or r.pending),
            key=lambda r: r.last_ts or 0.0,
            reverse=True,
        )[:STATUS_RUNS_SHOWN]
        dt = now - self._last_t if self._last_t is not None else 0.0
        self._last_t = now
        for r in shown:
            r.measure_rate(dt)
        return {
            "sink": self.name,
            "pid": os.getpid(),
            "phase": phase,
            "time": time.time(),
            "started": self.started,
            "store_id": store_id,
            "offset": offset,
            "head": head,
            "lag": lag,
            "latency_s": latency_s,
            "counters": asdict(counters),
            "interval_s": interval_s,
            "runs_tracked": len(runs),
            "retrying": sorted(r.name for r in runs.values() if r.attempts)[:STATUS_LIST_SHOWN],
            "gap_reports": gap_reports[-STATUS_LIST_SHOWN:],
            "store_losses": losses[-STATUS_LIST_SHOWN:],
            "hung": self._hung(runs.values(), now, deadline_s),
            "sink_stats": self._sink_stats(),
            "runs": [r.status_row(now) for r in shown],
        }

    def _hung(self, runs: Iterable[RunState], now: float, deadline_s: float) -> list[dict]:
        out = []
        for r in list(runs):
            call = r.call
            if call is not None and call.overdue(now, deadline_s):
                out.append(
                    {"run": r.name, "call": call.what, "kind": self.name,
                     "for_s": round(now - call.started, 1)}
                )  # fmt: skip
        return out[:STATUS_LIST_SHOWN]

    def _sink_stats(self) -> dict[str, Any]:
        stats = getattr(self.sink, "stats", None)
        if stats is None:
            return {}
        try:
            return dict(stats())
        except Exception as exc:  # a status probe must never stop the sink
            log.debug("sink stats failed: %s", exc)
            return {}
