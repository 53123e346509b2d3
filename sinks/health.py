"""What ``rose status`` reports: a sink's health from its status file, and the report's lines.

The report is a plain dict (``{"broker": stats or None, "sinks": [status, ...]}``,
as ``rose status --json`` prints it); :func:`status_lines` turns it into the
sentences a user reads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bus.wire import is_endpoint
from sinks.kinds import STATE_ROOT


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sink_health(status: dict[str, Any], now: float | None = None) -> str:
    """running / stopped / not responding, from a sink's status file."""
    now = time.time() if now is None else now
    if status.get("phase") == "stopped":
        return "stopped"
    age = now - float(status.get("time") or 0)
    if not _pid_alive(status.get("pid")):
        return "dead (no process)"
    if age > 3 * max(1.0, float(status.get("interval_s") or 1.0)):
        return f"not responding ({age:.0f}s since last status)"
    return status.get("phase") or "running"


def sink_state_dirs(given: list[str] | None, bus: str | None = None) -> list[Path]:
    """The sinks to show: --state DIRs, else those found where rose puts them.

    That is ./.rose-sink/*/ and ./*/.rose-sink/ (the defaults of `rose sink`), and,
    for a bus file STORE/bus.json, STORE/../state/*/ (the layout of rose-daemons).
    """
    if given:
        return [Path(d) for d in given]
    found = [p.parent for p in STATE_ROOT.glob("*/status.json")]
    found += [p.parent for p in Path(".").glob(f"*/{STATE_ROOT}/status.json")]
    if bus and not is_endpoint(bus):
        home = Path(bus).expanduser().parent.parent
        found += [p.parent for p in (home / "state").glob("*/status.json")]
    return sorted(set(found))


def sink_report(state_dir: Path) -> dict[str, Any] | None:
    """The status of the sink keeping its state in ``state_dir``, with its health; None if none."""
    from sinks.state import read_status

    status = read_status(state_dir)
    if status is None:
        return None
    status["state_dir"] = str(state_dir)
    status["health"] = sink_health(status)
    return status


def status_lines(report: dict[str, Any]) -> list[str]:
    """The report as ``rose status`` prints it: the broker, then each sink and its runs."""
    out = []
    b = report.get("broker")
    if b is not None:
        out.append(
            f"broker pid {b.get('pid')} store {b.get('store_id')}: {b.get('events')} event(s) "
            f"of {len(b.get('runs') or {})} run(s); received {b.get('received')}, stored "
            f"{b.get('stored')}, duplicates {b.get('duplicates')}, rejected {b.get('rejected')}, "
            f"forwarded {b.get('forwarded')}, up {float(b.get('uptime_s') or 0):.0f}s"
        )
        for d in b.get("recovered") or []:
            span = f"{d.get('first')}..{d.get('last')}" if d.get("last") is not None else (
                f"from {d.get('first')} (a cut tail)"
            )
            out.append(f"  the store set aside damaged records at its start: offsets {span}"
                       f"{', in ' + d['quarantine'] if d.get('quarantine') else ''}")  # fmt: skip
    elif report.get("broker_error"):
        out.append(f"broker: {report['broker_error']}")
    for s in report["sinks"]:
        c = s.get("counters", {})
        out.append(
            f"sink {s.get('sink')} [{s['health']}] pid {s.get('pid')} ({s['state_dir']}): "
            f"applied {c.get('applied')}, duplicates {c.get('duplicates')}, gaps {c.get('gaps')}, "
            f"retries {c.get('retries')}, failed {c.get('failed')}, invalid {c.get('invalid')}, "
            f"lag {s.get('lag')} event(s){latency_text(s.get('latency_s'))}"
        )
        out += [f"  {line}" for line in sink_alerts(s)]
        out += ["  " + run_status_text(r) for r in s.get("runs", [])[:10]]
    return out


def latency_text(latency: Any) -> str:
    """Live latency in ms; an old event (caught up from the store) by its age instead."""
    if not isinstance(latency, (int, float)):
        return ""
    if latency < 1.0:
        return f", latency {latency * 1000:.0f} ms"
    return f", last event applied {_duration(latency)} after it was emitted"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_status_text(r: dict[str, Any]) -> str:
    """One run of a sink: where it is, its criterion metric, progress."""
    where = {"start": "started", "stop": "finished"}.get(r.get("kind"), "running")
    if r.get("iteration") is not None:
        where += f", iteration {r['iteration']}"
    value = r.get("metric_value")
    if r.get("metric_name") is not None:
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        where += f", {r['metric_name']}={shown}"
    flag = " RETRYING: " + r["last_error"] if r.get("retrying") else ""
    rate = r.get("events_per_s")
    rate_text = f"{rate:.1f}" if isinstance(rate, (int, float)) else str(rate)
    return (
        f"{r['run']}: {where}; next seq {r.get('next_seq')}, {rate_text} ev/s"
        f"{' (done)' if r.get('done') else ''}{flag}"
    )


def sink_alerts(s: dict[str, Any]) -> list[str]:
    """What a user must know about a sink beyond its counters: losses, hung calls."""
    out = []
    for loss in s.get("store_losses") or []:
        out.append(
            f"the store lost {loss.get('lost')} event(s) after offset {loss.get('after')} "
            f"(store generation {loss.get('generation')}): re-read from there, events already "
            "applied skipped; lost events learners did not send again are missing"
        )
    for h in s.get("hung") or []:
        out.append(
            f"{h.get('kind')} call hung for {float(h.get('for_s') or 0):.0f} s on run "
            f"{h.get('run')} (its run waits; the others go on)"
        )
    maybe = (s.get("sink_stats") or {}).get("maybe_posted")
    if maybe:
        out.append(
            f"{maybe} post(s) got no reply and may not have reached Slack (not sent again, "
            "so none is posted twice)"
        )
    return out
