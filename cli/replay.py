"""``rose replay LOG...``: saved event logs into a sink (``--into KIND``) or a broker (``--publish``)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from cli.kinds import add_all_kind_options, build_checked, foreign_options, kind_options
from cli.options import (
    UsageError,
    add_client_key,
    add_command,
    add_delivery,
    check_endpoint,
    run_runtime,
    runtime_config,
    stop_on_signals,
    user_errors,
)
from sinks.kinds import SinkKind
from sinks.registry import available_kinds, load_kind
from sinks.replay import ChainSource, ReplayProgress, open_logs

log = logging.getLogger(__name__)

REPLAY_DESCRIPTION = """\
Replay saved event logs into a sink, or publish them to a broker.  A LOG is
a file sink / FileTracker log (run.jsonl), a BusTracker spool (same format),
a directory of *.jsonl logs, or a broker store directory (rose-store/).
Each (run, seq) is applied once and in order, so replaying twice changes
nothing (for sinks that keep no memory of their own, pass --state DIR).
"""

REPLAY_EPILOG = """\
examples:
  rose replay runs/*.jsonl --into file --out copy/
  rose replay rose-store/ --into file --out runs/          # everything the broker stored
  rose replay spool.jsonl --publish tcp://login:5555      # push a compute node's spool
  rose replay runs/ --into tracker --tracker mypkg.trackers:MyTracker --state st/
"""


def register(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "replay",
        help="replay event logs (files, spools, a broker store) into a sink or a broker",
        description=REPLAY_DESCRIPTION,
        epilog=REPLAY_EPILOG,
    )
    p.add_argument("logs", nargs="+", metavar="LOG", help="event logs, directories or stores")
    target = p.add_mutually_exclusive_group(required=True)
    kinds = available_kinds()
    target.add_argument("--into", choices=list(kinds), metavar="KIND", help=f"one of {list(kinds)}")
    target.add_argument(
        "--publish",
        metavar="EP",
        help="publish to a broker's frontend (tcp://HOST:5555) or via its bus.json",
    )
    add_client_key(
        p,
        "with --publish to a CURVE broker: this client's NAME.key_secret "
        "(default: $ROSE_CLIENT_KEY)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="processes for large replays of logs into sinks that allow it (file); "
        "0 = one per CPU [%(default)s]",
    )
    add_delivery(p, replay=True)
    owners = add_all_kind_options(p, kinds)
    p.set_defaults(func=run_replay, _kind_dests=owners)


def _expand_logs(paths: list[str]) -> list[tuple[str, Path]]:
    from sinks.bus_source import is_store_dir

    out: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UsageError(f"no such file or directory: {raw}")
        if path.is_dir():
            if is_store_dir(path):
                out.append(("store", path))
                continue
            logs = sorted(p for p in path.glob("*.jsonl") if p.is_file())
            if not logs:
                raise UsageError(f"{raw} holds no *.jsonl event logs and is not a broker store")
            out.extend(("log", p) for p in logs)
        elif not os.access(path, os.R_OK):
            raise UsageError(f"cannot read {raw}: permission denied")
        else:
            out.append(("log", path))
    return out


def run_replay(args: argparse.Namespace) -> int:
    if args.client_key and not args.publish:
        raise UsageError("--client-key applies to --publish (a sink replayed --into needs no broker)")
    logs = _expand_logs(args.logs)
    total = sum(p.stat().st_size for kind, p in logs if kind == "log")
    progress = ReplayProgress(total, not args.no_progress)
    try:
        with user_errors(ValueError, OSError):
            source = open_logs(logs, progress.advance)
        if args.publish:
            return _publish(args, source)
        return _replay_into(args, source, logs, progress)
    finally:
        progress.close()


def _replay_into(
    args: argparse.Namespace,
    source: ChainSource,
    logs: list[tuple[str, Path]] | None = None,
    progress: ReplayProgress | None = None,
) -> int:
    from sinks.concurrent import make_runtime

    kind = load_kind(args.into)
    assert kind is not None
    foreign = foreign_options(args, args.into)
    if foreign:
        verb = "does" if len(foreign) == 1 else "do"
        raise UsageError(f"{', '.join(foreign)} {verb} not apply to --into {args.into}")
    config = runtime_config(args, kind.max_attempts)
    options = kind_options(args, kind)
    sink = build_checked(kind, options, args.state)
    started = time.perf_counter()
    parallel = _claimed(sink, _try_parallel, args, kind, options, logs or [], config, progress)
    if parallel is not None:
        source.close()
        sink.shutdown()
        c, bad_lines = parallel
        stopping = False
    else:
        runtime = make_runtime(sink, source, state_dir=args.state, config=config, name=args.into)
        c = run_runtime(runtime)
        bad_lines = source.bad_lines
        stopping = runtime.stopping
    elapsed = max(time.perf_counter() - started, 1e-9)
    parts = [f"{c.applied} applied"]
    for label, n in (
        ("duplicate(s) skipped", c.duplicates),
        ("missing from the logs", c.gaps),
        ("failed", c.failed),
        ("invalid", c.invalid + bad_lines),
    ):
        if n:
            parts.append(f"{n} {label}")
    print(
        f"rose replay: {c.received} event(s) into {args.into}: {', '.join(parts)} "
        f"({elapsed:.2f}s, {c.received / elapsed:,.0f} events/s)",
        file=sys.stderr,
    )
    if stopping:
        return 130
    if c.applied + c.duplicates + c.failed == 0:
        return _nothing_valid()
    return 1 if c.failed else 0


def _nothing_valid() -> int:
    print("rose replay: error: the logs hold no valid event (are they rose event logs?)",
          file=sys.stderr)
    return 1


def _claimed(sink: Any, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` while holding the sink's outputs (the parallel replay's processes don't)."""
    from sinks.state import OutputBusy

    try:
        sink.claim_outputs()
    except OutputBusy as exc:
        raise UsageError(str(exc)) from None
    try:
        return fn(*args)
    finally:
        sink.release_outputs()


def _try_parallel(
    args: argparse.Namespace,
    kind: SinkKind,
    options: dict[str, Any],
    logs: list[tuple[str, Path]],
    config: Any,
    progress: ReplayProgress | None,
) -> tuple[Any, int] | None:
    """Replay in several processes when the sink allows it and it pays; else None."""
    import functools

    from sinks.replay import default_jobs, replay_parallel

    if args.jobs < 0:
        raise UsageError("--jobs must be >= 0 (0 = one per CPU)")
    jobs = args.jobs or default_jobs()
    if (
        jobs < 2
        or args.state
        or not kind.parallel_replay
        or any(what != "log" for what, _ in logs)
    ):
        return None
    paths = [p for _, p in logs]
    on_done = progress.advance if progress is not None else None
    builder = functools.partial(kind.build, state_dir=args.state, **options)
    return replay_parallel(builder, paths, config, jobs=jobs, on_done=on_done)


def _publish(args: argparse.Namespace, source: ChainSource) -> int:
    from bus.tracker import BusTracker

    target = args.publish
    if "://" not in target and not Path(target).exists() and re.fullmatch(r"[\w.-]+:\d+", target):
        raise UsageError(f"--publish {target}: an endpoint needs its transport, e.g. tcp://{target}")
    try:
        if "://" in target:
            tracker = BusTracker(check_endpoint(target, "--publish endpoint"),
                                 client_key=args.client_key, fallback=False)
        else:  # the logs replayed are the fallback: nothing to copy elsewhere
            tracker = BusTracker(bus=target, client_key=args.client_key, fallback=False)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stopping = {"flag": False}

    def stop() -> None:
        stopping["flag"] = True

    n = 0
    started = time.perf_counter()
    try:
        with stop_on_signals(stop):
            for item in source.subscribe(0):
                if stopping["flag"]:
                    break
                try:
                    event = item.load()
                except Exception as exc:
                    log.warning("skipping %s: %s", item, exc)
                    continue
                tracker.emit(event)
                n += 1
                # pace a large replay to what the broker takes (and acknowledges)
                paced = tracker.pending >= 5000 or tracker.unacked >= 50_000
                if paced and not tracker.flush(30_000) and not tracker.subscriptions:
                    break  # no broker there: the rest would only be refused as well
            ok = tracker.flush(30_000)
    finally:
        tracker.close(5000)
        source.close()
    elapsed = max(time.perf_counter() - started, 1e-9)
    print(
        f"rose replay: published {n} event(s) to {tracker.endpoint} "
        f"({tracker.dropped} not delivered, {elapsed:.2f}s)",
        file=sys.stderr,
    )
    if not ok or tracker.dropped:
        print(
            "rose replay: error: the broker did not take every event (is `rose bus` running?)",
            file=sys.stderr,
        )
        return 1
    if stopping["flag"]:
        return 130
    return 0 if n else _nothing_valid()
