"""What `rose tail` shows: a line per event, or on a terminal a live board.

:func:`format_tail_line` is the line; :class:`Rates` the runs' events/s.  The
board has one row per run and learner, refreshed in place: rows show where
each learner is (iteration, criterion metric, stop reason), how fast its run's
events arrive and how late they reach us; a second table shows each local
sink's progress and lag from its status file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rose.history import short_run

MAX_ROWS = 40  # most recently active rows shown; the board itself keeps at most 10x that


class Rates:
    """Events per second per run over a sliding window of a few seconds."""

    WINDOW_S = 5.0

    def __init__(self) -> None:
        self._seen: dict[str, list[float]] = {}

    def add(self, run: str, now: float) -> float:
        times = self._seen.setdefault(run, [])
        times.append(now)
        cut = now - self.WINDOW_S
        while times and times[0] < cut:
            times.pop(0)
        if len(self._seen) > 10_000:  # bounded: forget the quietest runs
            for name in list(self._seen)[:1000]:
                del self._seen[name]
        span = max(times[-1] - times[0], 1.0)
        return len(times) / span


def format_tail_line(event: dict[str, Any], rate: float, now: float) -> str:
    """One event as `rose tail` prints it: time, run, seq, what happened, events/s, lag."""
    body = event["body"]
    stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
    lag_ms = max(0.0, (now - event["ts"]) * 1000.0)
    kind = event["kind"]
    if kind == "iteration":
        what = f"iteration {body.get('iteration')}"
        if body.get("learner_id") is not None:
            what += f" learner {body['learner_id']}"
        if body.get("metric_name") is not None:
            value = body.get("metric_value")
            shown = f"{value:.6g}" if isinstance(value, float) else str(value)
            what += f" {body['metric_name']}={shown}"
    elif kind == "start":
        what = f"start {body.get('learner_type')}"
    else:
        what = f"stop {body.get('reason')}"
    return f"{stamp} {event['run']} #{event['seq']} {what} | {rate:.1f} ev/s | lag {lag_ms:.0f} ms"


class TailBoard:
    def __init__(self, sink_states: list[Path]) -> None:
        self.rows: dict[tuple[str, Any], dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.sink_states = sink_states

    def apply(self, event: dict[str, Any], rate: float, now: float) -> None:
        run, body, kind = event["run"], event["body"], event["kind"]
        info = self.runs.setdefault(run, {"learner_type": "?", "reason": None})
        info.update(rate=rate, lag_ms=max(0.0, (now - event["ts"]) * 1000.0), seen=now)
        if kind == "start":
            info["learner_type"] = body.get("learner_type", "?")
            return
        if kind == "stop":
            info["reason"] = body.get("reason")
            return
        key = (run, body.get("learner_id"))
        self.rows[key] = {
            "iteration": body.get("iteration"),
            "metric_name": body.get("metric_name"),
            "metric_value": body.get("metric_value"),
            "should_stop": body.get("should_stop"),
            "seen": now,
        }
        if len(self.rows) > 10 * MAX_ROWS:  # bounded: drop the stalest rows
            for stale in sorted(self.rows, key=lambda k: self.rows[k]["seen"])[:MAX_ROWS]:
                del self.rows[stale]

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(title=f"live runs ({time.strftime('%H:%M:%S')})", min_width=80)
        names = {row["metric_name"] for row in self.rows.values() if row["metric_name"]}
        from rose.metrics import label

        metric_header = " / ".join(label(n) for n in sorted(names)) or "metric"
        # The run id stays whole up to its name; numbers never shrink (rich would cut them).
        table.add_column("run", overflow="ellipsis", min_width=12)
        table.add_column("learner", justify="right", no_wrap=True, min_width=7)
        table.add_column("iteration", justify="right", no_wrap=True, min_width=9)
        table.add_column(metric_header, justify="right", no_wrap=True, min_width=10)
        table.add_column("state", no_wrap=True, min_width=13)
        for col in ("events/s", "lag"):
            table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
        shown = sorted(self.rows.items(), key=lambda kv: kv[1]["seen"], reverse=True)[:MAX_ROWS]
        for (run, lid), row in sorted(shown, key=lambda kv: (kv[0][0], str(kv[0][1]))):
            info = self.runs.get(run, {})
            value = row["metric_value"]
            metric = "" if value is None else f"{value:.4g}"
            reason = info.get("reason") or ("criterion_met" if row["should_stop"] else "running")
            table.add_row(short_run(run), "" if lid is None else str(lid), str(row["iteration"]),
                          metric, reason, f"{info.get('rate', 0):.1f}",
                          f"{info.get('lag_ms', 0):.0f} ms")
        if not shown:
            table.add_row("(waiting for events…)", "", "", "", "", "", "")
        parts: list[Any] = [table]
        sinks = self._sinks_table()
        if sinks is not None:
            parts.append(sinks)
        return Group(*parts)

    def _sinks_table(self) -> Any:
        from rich.table import Table

        if not self.sink_states:
            return None
        table = Table(title="sinks", min_width=80)
        for col in ("sink", "state dir", "applied", "lag (events)", "retrying"):
            table.add_column(col, justify="right" if col in ("applied", "lag (events)") else "left")
        for state in self.sink_states:
            try:
                st = json.loads((state / "status.json").read_text())
            except (OSError, ValueError):
                table.add_row("?", str(state), "", "", "no status yet")
                continue
            table.add_row(str(st.get("sink", "?")), str(state), str(st["counters"]["applied"]),
                          str(st.get("lag", "")), ", ".join(st.get("retrying", [])[:3]))
        return table
