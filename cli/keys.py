"""``rose keys generate``: CURVE key pairs for an encrypted, authenticated bus."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.options import UsageError, add_command

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
    p = add_command(
        subparsers,
        "keys",
        help="create CURVE keys for an encrypted, authenticated bus",
        description=KEYS_HELP,
        epilog=KEYS_EPILOG,
    )
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    g = add_command(
        sub,
        "generate",
        help="create key pairs in DIR",
        description=KEYS_HELP,
        epilog=KEYS_EPILOG,
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
        p.print_help(sys.stderr)
        raise UsageError("which action? `rose keys generate DIR`")

    p.set_defaults(func=need_action)


def run_keys_generate(args: argparse.Namespace) -> int:
    """``rose keys generate DIR``: key pairs with 0600 secret files."""
    from bus.security import AUTHORIZED_DIR, CurveError, authorize, generate_keypair

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
