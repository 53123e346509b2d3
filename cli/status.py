"""``rose status``: the broker's counters and each sink's progress, health and alerts."""

from __future__ import annotations

import argparse
from typing import Any

from cli.options import (
    UsageError,
    add_command,
    add_connection,
    add_watched_states,
    bus_client,
    default_bus,
)

#: A status request waits less than a sink would: the answer is for a person.
STATUS_TIMEOUT_MS = 2000

STATUS_EPILOG = """\
examples:
  rose status --bus ~/rose-tracking/store/bus.json --state runs/.rose-sink
  rose status --json            # machine-readable

Without --bus it asks the broker of ./rose-store/bus.json (or $ROSE_BUS) when
present; without --state it looks for sinks under ./.rose-sink/*/ and ./*/.rose-sink/,
and, for --bus HOME/store/bus.json, under HOME/state/*/ (where rose-daemons keeps them).
"""



def register(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "status",
        help="counters of the broker and of the sinks (applied, gaps, retries, lag)",
        description="Show what the broker stored and what each sink applied, with lag.",
        epilog=STATUS_EPILOG,
    )
    add_connection(p)
    add_watched_states(p, "a sink's state directory (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_status, timeout_ms=STATUS_TIMEOUT_MS)


def run_status(args: argparse.Namespace) -> int:
    from sinks.health import sink_report, sink_state_dirs, status_lines

    report: dict[str, Any] = {"broker": None, "sinks": []}
    broker_error = None
    if default_bus(args):
        client = bus_client(args)
        try:
            report["broker"] = client.stats()
        except Exception as exc:
            broker_error = str(exc)
        finally:
            client.close()
    for d in sink_state_dirs(args.sink_states, args.bus):
        status = sink_report(d)
        if status is None:
            if args.sink_states:
                raise UsageError(f"no sink status in {d} (is a sink using --state {d}?)")
            continue
        report["sinks"].append(status)
    if broker_error is not None:
        report["broker_error"] = broker_error
    nothing = report["broker"] is None and not report["sinks"]
    if args.json:
        import json

        print(json.dumps(report, indent=2, default=str))
    elif not nothing:  # with nothing to show, the error below is the one line
        for line in status_lines(report):
            print(line)
    if nothing:
        if broker_error:
            raise UsageError(broker_error)
        raise UsageError(
            "nothing to report: no broker given or found (--bus FILE) and no sink state "
            "found (--state DIR)"
        )
    return 0 if broker_error is None else 1
