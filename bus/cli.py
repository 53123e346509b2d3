"""``rose bus``: run the broker in this process until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from bus.wire import DEFAULT_BACKEND, DEFAULT_FRONTEND, DEFAULT_MAX_EVENT_BYTES, DEFAULT_REPLAY

log = logging.getLogger(__name__)

HELP = """\
Run the broker: learners publish to --frontend, sinks subscribe to --backend,
catch-up and status requests go to --replay.  Every event is appended to the
durable store in --store before it is forwarded, duplicates are dropped, and
DIR/bus.json records the endpoints so learners and sinks can find the broker
with --bus DIR/bus.json (or BusTracker(bus=...)).  Loopback only unless you
give other addresses.  SIGTERM or Ctrl-C flushes the store and exits 0.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bus",
        help="run the broker (event store + forwarding to sinks)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--frontend",
        default=DEFAULT_FRONTEND,
        metavar="EP",
        help="where learners connect (XSUB) [%(default)s]",
    )
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        metavar="EP",
        help="where sinks connect (XPUB) [%(default)s]",
    )
    p.add_argument(
        "--replay",
        default=DEFAULT_REPLAY,
        metavar="EP",
        help="catch-up and status requests (ROUTER) [%(default)s]",
    )
    p.add_argument(
        "--store",
        default="./rose-store",
        metavar="DIR",
        help="durable event store directory; bus.json is written here [%(default)s]",
    )
    p.add_argument(
        "--hwm",
        type=int,
        default=100_000,
        help="socket high-water marks, in messages [%(default)s]",
    )
    p.add_argument(
        "--fsync-interval",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="fsync the store at most this often [%(default)s]",
    )
    p.add_argument(
        "--max-event-bytes",
        type=int,
        default=DEFAULT_MAX_EVENT_BYTES,
        metavar="N",
        help="reject larger events [%(default)s]",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bus.broker import Broker, BrokerError
    from bus.store import StoreError
    from rose.cli import UsageError

    for name in ("frontend", "backend", "replay"):
        ep = getattr(args, name)
        if "://" not in ep:
            raise UsageError(f"--{name} {ep!r} is not an endpoint (like tcp://127.0.0.1:5555)")
    if args.hwm < 1 or args.max_event_bytes < 1 or args.fsync_interval < 0:
        raise UsageError("--hwm and --max-event-bytes must be positive, --fsync-interval >= 0")
    broker = Broker(
        args.store,
        args.frontend,
        args.backend,
        args.replay,
        hwm=args.hwm,
        max_event_bytes=args.max_event_bytes,
        fsync_interval_s=args.fsync_interval,
    )

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received signal %d: stopping", signum)
        broker.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def announce(b: Broker) -> None:
        e = b.endpoints
        print(
            f"rose bus: learners -> {e['frontend']}  sinks -> {e['backend']}  "
            f"requests -> {e['replay']}  store {args.store} (id {b.store_id}); "
            f"bus file {b.bus_file}",
            file=sys.stderr,
            flush=True,
        )

    try:
        broker.run(on_ready=announce)
    except (BrokerError, StoreError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
