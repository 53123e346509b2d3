"""``rose bus``: run the broker in this process until SIGTERM or SIGINT; ``rose keys``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from bus.wire import DEFAULT_BACKEND, DEFAULT_FRONTEND, DEFAULT_REPLAY

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

KEYS_HELP = """\
Create CURVE key pairs for the bus.  Without --name: a broker pair
(broker.key, broker.key_secret), a client pair (client.key,
client.key_secret) and DIR/authorized/ holding client.key, which is all a
single user needs.  With --name NAME: one more pair, NAME.key and
NAME.key_secret (add --authorize to let it in).  Secret files are created
0600 and never overwritten unless --force.
"""

KEYS_EPILOG = """\
examples:
  rose keys generate ~/rose-tracking/keys
  rose bus --curve-secret-key ~/rose-tracking/keys/broker.key_secret \\
           --authorized-keys ~/rose-tracking/keys/authorized --store ~/rose-tracking/store
  rose sink file --bus ~/rose-tracking/store/bus.json --client-key ~/rose-tracking/keys/client.key_secret --out runs/
  # learner:  BusTracker(bus="~/rose-tracking/store/bus.json", client_key="~/rose-tracking/keys/client.key_secret")
  rose keys generate ~/rose-tracking/keys --name sinks --authorize
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bus",
        help="run the broker (event store + forwarding to sinks)",
        description=HELP,
        epilog=BUS_EPILOG,
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
    _register_keys(subparsers)


def _register_keys(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keys",
        help="create CURVE keys for an encrypted, authenticated bus",
        description=KEYS_HELP,
        epilog=KEYS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    g = sub.add_parser(
        "generate",
        help="create key pairs in DIR",
        description=KEYS_HELP,
        epilog=KEYS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("dir", metavar="DIR", help="where to write the key files (created 0700)")
    g.add_argument("--name", help="create only the pair NAME.key / NAME.key_secret")
    g.add_argument(
        "--authorize",
        action="store_true",
        help="with --name: also copy NAME.key into DIR/authorized/",
    )
    g.add_argument("--force", action="store_true", help="replace existing key files")
    g.set_defaults(func=run_keys_generate)

    def need_action(_args: argparse.Namespace) -> int:
        from rose.cli import UsageError

        p.print_help(sys.stderr)
        raise UsageError("which action? `rose keys generate DIR`")

    p.set_defaults(func=need_action)


def run_keys_generate(args: argparse.Namespace) -> int:
    """``rose keys generate DIR``: key pairs with 0600 secret files."""
    from bus.security import AUTHORIZED_DIR, CurveError, authorize, generate_keypair
    from rose.cli import UsageError

    out = Path(args.dir).expanduser()
    try:
        if args.name:
            public, secret = generate_keypair(out, args.name, force=args.force)
            made = [public, secret]
            if args.authorize:
                made.append(authorize(public, out / AUTHORIZED_DIR))
        else:
            if args.authorize:
                raise UsageError("--authorize goes with --name (the default client is authorized)")
            made = [*generate_keypair(out, "broker", force=args.force)]
            client_public, client_secret = generate_keypair(out, "client", force=args.force)
            made += [client_public, client_secret, authorize(client_public, out / AUTHORIZED_DIR)]
    except CurveError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write keys into {out}: {exc.strerror or exc}") from None
    for path in made:
        print(path)
    if not args.name:
        print(
            f"\nbroker:  rose bus --curve-secret-key {out / 'broker.key_secret'} "
            f"--authorized-keys {out / AUTHORIZED_DIR} ...\n"
            f"clients: --client-key {out / 'client.key_secret'} (sinks), "
            f"BusTracker(..., client_key=...) or ROSE_CLIENT_KEY (learners); "
            "the broker's public key is in its bus.json",
            file=sys.stderr,
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from bus.broker import Broker, BrokerError
    from bus.store import StoreError
    from rose.cli import UsageError

    for name in ("frontend", "backend", "replay"):
        ep = getattr(args, name)
        if "://" not in ep:
            raise UsageError(f"--{name} {ep!r} is not an endpoint (like tcp://127.0.0.1:5555)")
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

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received signal %d: stopping", signum)
        broker.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

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
        broker.run(on_ready=announce)
    except (BrokerError, StoreError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
