"""``rose tail``: follow the broker's events live, one line per event or a live board."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from bus.wire import Op
from cli.options import (
    UsageError,
    add_command,
    add_connection,
    add_watched_states,
    bus_client,
    stop_on_signals,
)

log = logging.getLogger(__name__)

#: How long a quiet subscription waits before the live board refreshes anyway.
IDLE_MS = 200

TAIL_EPILOG = """\
examples:
  rose tail --bus ~/rose-tracking/store/bus.json                 # live, one line per event
  rose tail --bus ~/rose-tracking/store/bus.json --last 20 --run myexp
  rose tail --bus ~/rose-tracking/store/bus.json --count 100 --duration 60

On a terminal it shows a live board (one row per run and learner, plus the
local sinks' progress), refreshed in place; piped, or with --lines, one line
per event: time, run, kind, iteration, metric, the run's events/s and the lag
between the learner emitting the event and this line.
"""



def register(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "tail",
        help="follow live runs: one line per event (iteration, metric, events/s, lag)",
        description="Follow the broker's events as they arrive, one line per event.",
        epilog=TAIL_EPILOG,
    )
    add_connection(p)
    p.add_argument("--run", metavar="PREFIX", default="", help="only runs whose id starts so")
    p.add_argument("--last", type=int, default=0, metavar="N", help="first show N stored events")
    p.add_argument("--from-start", action="store_true", help="show every stored event first")
    p.add_argument("--count", type=int, metavar="N", help="exit after N events")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="exit after this long")
    p.add_argument("--lines", action="store_true",
                   help="one line per event even on a terminal (the default when piped)")
    add_watched_states(p, "a sink's state directory to show in the live view (repeatable; "
                       "default: the sinks found under .rose-sink/)")
    p.set_defaults(func=run_tail)


def run_tail(args: argparse.Namespace) -> int:
    from rose.events.msgpack_codec import decode
    from rose.events.schema import EventError
    from sinks.tail_view import Rates, format_tail_line

    client = bus_client(args)
    stopping = {"flag": False}

    def stop() -> None:
        stopping["flag"] = True

    deadline = None if args.duration is None else time.monotonic() + args.duration
    rates = Rates()
    shown = 0
    board = live = None
    if sys.stdout.isatty() and not args.lines:
        from rich.live import Live

        from sinks.health import sink_state_dirs
        from sinks.tail_view import TailBoard

        board = TailBoard(sink_state_dirs(args.sink_states, args.bus))
        live = Live(board.render(), refresh_per_second=4)
        live.__enter__()
    try:
        try:
            head = int(client.request(Op.HELLO)["next_offset"])
        except Exception as exc:
            raise UsageError(str(exc)) from None
        start = 0 if args.from_start else max(0, head - max(0, args.last))
        prefix = "rose." + args.run  # the topics of the runs whose id starts so
        with stop_on_signals(stop):
            for ev in client.subscribe(start, prefix=prefix, idle_timeout_ms=IDLE_MS):
                if stopping["flag"] or (deadline is not None and time.monotonic() > deadline):
                    break
                if ev is None:
                    if live is not None:
                        live.update(board.render())
                    continue
                try:
                    event = decode(ev.payload)
                except EventError as exc:
                    log.debug("skipping an undecodable event at offset %s: %s", ev.offset, exc)
                    continue
                now = time.time()
                rate = rates.add(event["run"], now)
                if live is not None:
                    board.apply(event, rate, now)
                    live.update(board.render())
                else:
                    print(format_tail_line(event, rate, now), flush=True)
                shown += 1
                if args.count is not None and shown >= args.count:
                    break
    except BrokenPipeError:  # `rose tail | head`
        sys.stderr.close()
    finally:
        if live is not None:
            live.__exit__(None, None, None)
        client.close()
    return 0
