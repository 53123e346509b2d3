"""What the ``rose`` commands share: the user-error type, endpoint checks, signals,
the broker connection options and the sink state options, each written once.

Defaults come from the named constants of the modules that own them.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bus.wire import ENV_BUS, is_endpoint, locate_bus, read_bus_file

log = logging.getLogger(__name__)

_ENDPOINT_RE = re.compile(
    r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._*-]+):(\d{1,5}|\*)|ipc://.+|inproc://.+)$"
)


class UsageError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


@contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Inside the block, ``types`` (ValueError by default) become a one-line UsageError."""
    caught = types or (ValueError,)
    try:
        yield
    except caught as exc:
        raise UsageError(str(exc)) from None


def add_command(
    subparsers: Any, name: str, *, help: str, description: str, epilog: str | None
) -> argparse.ArgumentParser:
    """A command's parser; its description and examples are printed as written."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ------------------------------------------------------------------ endpoints


def check_endpoint(ep: Any, what: str, *, bind: bool = False) -> str:
    """``ep`` if it is a ZeroMQ endpoint, else UsageError naming ``what``.

    ``bind``: an address ``rose bus`` binds (ZeroMQ itself judges the rest of
    it); only a missing transport is the user's typo to report here.
    """
    if bind:
        if not isinstance(ep, str) or not is_endpoint(ep):
            raise UsageError(f"{what} {ep!r} is not an endpoint (like tcp://127.0.0.1:5555)")
        return ep
    if not isinstance(ep, str) or not _ENDPOINT_RE.match(ep):
        raise UsageError(f"bad {what} {ep!r}: expected tcp://HOST:PORT or ipc://PATH")
    return ep


# ------------------------------------------------------------------ signals


@contextmanager
def stop_on_signals(stop: Callable[[], None], doing: str = "stopping") -> Iterator[None]:
    """SIGTERM and SIGINT call ``stop`` while the block runs; the old handlers come back after."""

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %s: %s", signum, doing)
        stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


# ------------------------------------------------------------------ broker connection

CLIENT_KEY_HELP = "this client's NAME.key_secret for a CURVE broker (default: $ROSE_CLIENT_KEY)"


def add_client_key(group: Any, help: str = CLIENT_KEY_HELP) -> None:
    group.add_argument("--client-key", metavar="FILE", help=help)


def add_connection(p: argparse.ArgumentParser) -> None:
    """--bus, or --backend with --replay; the request timeout; CURVE keys."""
    from bus.client import DEFAULT_TIMEOUT_MS

    g = p.add_argument_group("broker connection")
    g.add_argument("--bus", metavar="FILE", help="the broker's bus.json (or its store directory)")
    g.add_argument("--backend", metavar="EP", help="the broker's XPUB endpoint (with --replay)")
    g.add_argument("--replay", metavar="EP", help="the broker's request endpoint (with --backend)")
    g.add_argument(
        "--timeout-ms",
        type=int,
        default=DEFAULT_TIMEOUT_MS,
        metavar="MS",
        help="wait this long for each answer from the broker [%(default)s]",
    )
    g.add_argument(
        "--server-key",
        metavar="FILE",
        help="the broker's public CURVE key file (default: from its bus.json, $ROSE_SERVER_KEY)",
    )
    add_client_key(g)


def default_bus(args: argparse.Namespace) -> bool:
    """Fill args.bus from $ROSE_BUS or ./rose-store when nothing was given; True if found."""
    if args.bus or args.backend or args.replay:
        return True
    where = locate_bus(default_store=True)
    if where and is_endpoint(where):
        raise UsageError(
            f"{ENV_BUS} is an endpoint ({where}), which is enough for learners; sinks and tools "
            "also need the broker's other endpoints: give --bus STORE/bus.json, or set "
            f"{ENV_BUS} to that file"
        )
    args.bus = where
    return where is not None


def bus_client(args: argparse.Namespace) -> Any:
    """A BusClient for the broker the connection options name (checked first)."""
    from bus.client import BusClient

    if args.bus and (args.backend or args.replay):
        raise UsageError("give either --bus FILE or --backend/--replay, not both")
    default_bus(args)
    if not args.bus:
        if not (args.backend and args.replay):
            raise UsageError(
                "where is the broker? give --bus STORE/bus.json (or set ROSE_BUS), or "
                "--backend EP and --replay EP; none given and no ./rose-store/bus.json here"
            )
        check_endpoint(args.backend, "--backend endpoint")
        check_endpoint(args.replay, "--replay endpoint")
    keys = {"server_key": args.server_key, "client_key": args.client_key}
    with user_errors(ValueError):
        if args.bus:
            info = read_bus_file(args.bus)
            check_endpoint(info["backend"], f"backend endpoint in {args.bus}")
            check_endpoint(info["replay"], f"replay endpoint in {args.bus}")
            return BusClient.from_file(args.bus, timeout_ms=args.timeout_ms, **keys)
        return BusClient(args.backend, args.replay, timeout_ms=args.timeout_ms, **keys)


# ------------------------------------------------------------------ sink state


def expanded_path(value: str) -> Path:
    """A directory argument with ``~`` expanded (``--state=~/x`` reaches us unexpanded)."""
    return Path(value).expanduser()


def add_state_dir(group: Any, *, replay: bool = False) -> None:
    """--state DIR: where this sink keeps its checkpoint and status."""
    group.add_argument(
        "--state",
        metavar="DIR",
        type=expanded_path,
        help="checkpoint and status directory"
        + (" (replays remember nothing without it)" if replay else " [depends on the kind]"),
    )


def add_watched_states(p: Any, help: str) -> None:
    """--state DIR (repeatable): sinks to report on (dest ``sink_states``)."""
    p.add_argument("--state", dest="sink_states", action="append", metavar="DIR", help=help)


# ------------------------------------------------------------------ delivery (rose sink, rose replay)


def add_delivery(p: argparse.ArgumentParser, *, replay: bool = False) -> None:
    """The runtime's options: --state, retries, batches, the call deadline (and --gap-grace)."""
    from sinks.runconfig import (
        DEFAULT_CALL_DEADLINE_MS,
        DEFAULT_GAP_GRACE_MS,
        DEFAULT_MAX_BATCH,
        DEFAULT_RETRY_MAX_MS,
    )

    g = p.add_argument_group("delivery")
    add_state_dir(g, replay=replay)
    g.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="tries per event before skipping it; 0 = retry forever [depends on the kind]",
    )
    timings = [
        ("--retry-max", float, DEFAULT_RETRY_MAX_MS / 1000.0, "SECONDS",
         "cap of the exponential backoff between retries [%(default)s]"),
        ("--batch", int, DEFAULT_MAX_BATCH, "N", "events per backend call [%(default)s]"),
        ("--call-deadline", float, DEFAULT_CALL_DEADLINE_MS / 1000.0, "SECONDS",
         "a backend call running longer is reported as hung; the sink's other runs go on "
         "meanwhile [%(default)s]"),
    ]  # fmt: skip
    if not replay:
        timings.append(("--gap-grace", float, DEFAULT_GAP_GRACE_MS / 1000.0, "SECONDS",
                        "how long a missing event may be late before it is reported "
                        "[%(default)s]"))  # fmt: skip
    for flag, kind, default, metavar, help in timings:
        g.add_argument(flag, type=kind, default=default, metavar=metavar, help=help)


def runtime_config(args: argparse.Namespace, kind_max_attempts: int | None) -> Any:
    """The RuntimeConfig the delivery options ask for (the kind's attempts by default)."""
    from sinks.runconfig import RuntimeConfig

    attempts = args.max_attempts
    if attempts is None:
        attempts = kind_max_attempts
    elif attempts < 0:
        raise UsageError("--max-attempts must be >= 0 (0 = retry forever)")
    elif attempts == 0:
        attempts = None
    if args.batch < 1 or args.retry_max <= 0 or args.call_deadline <= 0:
        raise UsageError("--batch must be >= 1, --retry-max and --call-deadline > 0")
    extra = {}
    if getattr(args, "gap_grace", None) is not None:
        extra["gap_grace_ms"] = args.gap_grace * 1000.0
    return RuntimeConfig(
        max_batch=args.batch,
        max_attempts=attempts,
        retry_max_ms=args.retry_max * 1000.0,
        call_deadline_ms=args.call_deadline * 1000.0,
        **extra,
    )


def run_runtime(runtime: Any) -> Any:
    """``runtime.run()`` until it stops (SIGTERM/SIGINT stop it after the current batch)."""
    from sinks.state import OutputBusy, StateDirBusy

    with stop_on_signals(runtime.stop, "finishing the current batch, then exiting"):
        try:
            return runtime.run()
        except (StateDirBusy, OutputBusy) as exc:
            raise UsageError(str(exc)) from None
