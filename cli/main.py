"""The ``rose`` console script: the parser, logging, exit codes and the internal-error line.

Each command is a module of this package with ``register(subparsers)``, which
adds parsers whose ``func(args) -> int`` runs the command.  User mistakes raise
:class:`cli.options.UsageError` and print one line; nothing a user can get
wrong ends in a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cli.options import UsageError

DESCRIPTION = """\
ROSE tracking over a message bus.

Learners publish lifecycle events through a BusTracker; `rose bus` receives and
stores them on the login node; `rose sink ...` processes write them to files,
MLflow, ClearML, Slack or any tracker; `rose replay` feeds saved event logs
into a new sink at any time.
"""

EPILOG = """\
typical session (login node):
  rose bus --store ~/rose-tracking/store &            # the broker
  rose sink file --bus ~/rose-tracking/store/bus.json --out runs/ &
  # in the learner script:  learner.add_tracker(BusTracker(bus="~/rose-tracking/store/bus.json"))
  rose replay runs/*.jsonl --into file --out copy/   # later, anywhere

`rose COMMAND --help` explains each command.
"""


def _register_commands(sub: argparse._SubParsersAction) -> None:
    # In the order `rose --help` lists them.
    from cli import bus, keys, plot, replay, sink, status, tail

    for command in (bus, keys, sink, replay, status, tail, plot):
        command.register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rose",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the rose version and exit")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    _register_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.version:
        from rose import __version__

        print(f"rose {__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"rose {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rose status --json | head`: the reader left, which is fine
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("ROSE_DEBUG"):
            raise
        print(
            f"rose {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set ROSE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
