"""``rose bus``: run the broker in this process until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from bus.broker import DEFAULT_HWM
from bus.store import DEFAULT_FSYNC_INTERVAL_S
from bus.wire import DEFAULT_BACKEND, DEFAULT_FRONTEND, DEFAULT_REPLAY, DEFAULT_STORE_DIR
from cli.options import UsageError, add_command, check_endpoint, stop_on_signals

log = logging.getLogger(__name__)

HELP = """\
Run the broker: learners publish to --frontend, sinks subscribe to --backend,
catch-up and status requests go to --replay.  Every event is appended to the
durable store in --store before it is forwarded, duplicates are dropped, and
DIR/bus.json records the endpoints so learners and sinks can find the broker
with --bus DIR/bus.json (or BusTracker(bus=...)).  Loopback only unless you
give other addresses.  SIGTERM or Ctrl-C flushes the store and exits 0.

With --curve-secret-key and --authorized-keys every socket is encrypted and
authenticated (CURVE): only clients whose public key file is in the
authorized-keys directory get events in or out.  bus.json then carries the
broker's public key, so clients that read it only need their own key pair.
"""

BUS_EPILOG = """\
examples:
  rose bus --store ~/rose-tracking/store
  rose keys generate ~/rose-tracking/keys
  rose bus --store ~/rose-tracking/store --frontend tcp://0.0.0.0:5555 \\
      --curve-secret-key ~/rose-tracking/keys/broker.key_secret --authorized-keys ~/rose-tracking/keys/authorized
"""

def register(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "bus",
        help="run the broker (event store + forwarding to sinks)",
        description=HELP,
        epilog=BUS_EPILOG,
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
        default=f"./{DEFAULT_STORE_DIR}",
        metavar="DIR",
        help="durable event store directory; bus.json is written here [%(default)s]",
    )
    p.add_argument(
        "--hwm",
        type=int,
        default=DEFAULT_HWM,
        help="socket high-water marks, in messages [%(default)s]",
    )
    p.add_argument(
        "--fsync-interval",
        type=float,
        default=DEFAULT_FSYNC_INTERVAL_S,
        metavar="SECONDS",
        help="fsync the store at most this often [%(default)s]",
    )
    p.add_argument(
        "--new-store-id",
        action="store_true",
        help="only when store.json was lost and no bus.json names the store: serve the "
        "segments under a new store id (sinks re-read them and skip what they hold)",
    )
    g = p.add_argument_group("CURVE security (both or neither)")
    g.add_argument(
        "--curve-secret-key",
        metavar="FILE",
        help="the broker's NAME.key_secret (from `rose keys generate`): encrypt every socket",
    )
    g.add_argument(
        "--authorized-keys",
        metavar="DIR",
        help="directory of the clients' public *.key files; nobody else gets in or out",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bus.broker import Broker, BrokerError
    from bus.store import StoreError

    for name in ("frontend", "backend", "replay"):
        check_endpoint(getattr(args, name), f"--{name}", bind=True)
    if args.hwm < 1 or args.fsync_interval < 0:
        raise UsageError("--hwm must be positive, --fsync-interval >= 0")
    from bus.security import CurveError

    try:
        broker = Broker(
            args.store,
            args.frontend,
            args.backend,
            args.replay,
            hwm=args.hwm,
            fsync_interval_s=args.fsync_interval,
            new_store_id=args.new_store_id,
            curve_secret_key=args.curve_secret_key,
            authorized_keys=args.authorized_keys,
        )
    except CurveError as exc:
        raise UsageError(str(exc)) from None

    def announce(b: Broker) -> None:
        e = b.endpoints
        print(
            f"rose bus: learners -> {e['frontend']}  sinks -> {e['backend']}  "
            f"requests -> {e['replay']}  store {args.store} (id {b.store_id}); "
            f"bus file {b.bus_file}"
            + ("" if b.curve is None else f"; CURVE on ({len(b.authorizer.keys)} client key(s))"),
            file=sys.stderr,
            flush=True,
        )

    try:
        with stop_on_signals(broker.stop):
            broker.run(on_ready=announce)
    except (BrokerError, StoreError) as exc:
        raise UsageError(str(exc)) from None
    return 0
