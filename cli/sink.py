"""``rose sink KIND``: follow the broker and write its events to files, a tracker, MLflow, ..."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from cli.kinds import add_kind_options, build_checked, kind_options
from cli.options import (
    UsageError,
    add_command,
    add_connection,
    add_delivery,
    bus_client,
    run_runtime,
    runtime_config,
)
from sinks.registry import available_kinds, load_kind

log = logging.getLogger(__name__)

SINK_DESCRIPTION = """\
Run one sink: follow the broker's events and write them somewhere.  The sink
first catches up from the broker's durable store (from its own checkpoint),
then follows live events; each run's events are applied exactly once and in
order, a failing backend is retried with backoff without losing its place,
and SIGTERM / Ctrl-C finishes the current batch, checkpoints and exits 0.
Point it at the broker with --bus STORE/bus.json or --backend/--replay.
"""

SINK_EPILOG = """\
examples:
  rose sink file --bus ~/rose-tracking/store/bus.json --out runs/
  rose sink tracker mypkg.trackers:MyTracker --arg every=5 --bus ~/rose-tracking/store/bus.json
  rose status --state runs/.rose-sink          # its counters while it runs
"""


def register(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "sink",
        help="run a sink: follow the broker and write events to files, a tracker, ...",
        description=SINK_DESCRIPTION,
        epilog=SINK_EPILOG,
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    for name, kind in available_kinds().items():
        k = add_command(
            kinds,
            name,
            help=kind.help,
            description=f"{SINK_DESCRIPTION}\nThis sink: {kind.help}.",
            epilog=kind.epilog,
        )
        add_kind_options(k, kind)
        add_connection(k)
        add_delivery(k)
        k.set_defaults(func=run_sink)
    p.set_defaults(func=lambda args: _need_kind(p))


def _need_kind(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    raise UsageError(f"which sink? one of: {', '.join(available_kinds())}")


def run_sink(args: argparse.Namespace) -> int:
    """``rose sink KIND``: follow the broker until SIGTERM/SIGINT."""
    from sinks.bus_source import BusSource
    from sinks.concurrent import make_runtime

    kind = load_kind(args.kind)
    assert kind is not None
    config = runtime_config(args, kind.max_attempts)
    options = kind_options(args, kind)
    state = kind.state_dir(args.state, **options)
    sink = build_checked(kind, options, state)
    source = BusSource(bus_client(args))
    runtime = make_runtime(sink, source, state_dir=state, config=config, name=args.kind)
    # One line, as the broker prints: where it reads, where it keeps its state.
    print(
        f"rose sink {args.kind}: following the broker of {args.bus or args.backend}; "
        f"checkpoint and status in {state} (see `rose status`); Ctrl-C or SIGTERM stops it",
        file=sys.stderr,
        flush=True,
    )
    counters = run_runtime(runtime)
    log.info("rose sink %s stopped: %s", args.kind, counters)
    return 0

