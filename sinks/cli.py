"""``rose sink``, ``rose replay``, ``rose status`` and ``rose tail``.

Registered into the ``rose`` console script by :mod:`rose.cli`.  User
mistakes (bad endpoints, missing files, wrong options) raise UsageError and
print one line; daemons stop cleanly on SIGTERM/SIGINT with exit status 0.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from bus.wire import ENV_BUS, Op, is_endpoint, locate_bus, read_bus_file
from rose.cli import UsageError
from sinks.registry import available_kinds, load_kind

log = logging.getLogger(__name__)

_ENDPOINT_RE = re.compile(
    r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._*-]+):(\d{1,5}|\*)|ipc://.+|inproc://.+)$"
)
STATE_ROOT = Path(".rose-sink")

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

STATUS_EPILOG = """\
examples:
  rose status --bus ~/rose-tracking/store/bus.json --state runs/.rose-sink
  rose status --json            # machine-readable

Without --bus it asks the broker of ./rose-store/bus.json (or $ROSE_BUS) when
present; without --state it looks for sinks under ./.rose-sink/*/ and ./*/.rose-sink/,
and, for --bus HOME/store/bus.json, under HOME/state/*/ (where rose-daemons keeps them).
"""

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


# ------------------------------------------------------------------ shared options


def check_endpoint(ep: str, what: str = "endpoint") -> str:
    if not isinstance(ep, str) or not _ENDPOINT_RE.match(ep):
        raise UsageError(f"bad {what} {ep!r}: expected tcp://HOST:PORT or ipc://PATH")
    return ep


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker connection")
    g.add_argument("--bus", metavar="FILE", help="the broker's bus.json (or its store directory)")
    g.add_argument("--backend", metavar="EP", help="the broker's XPUB endpoint (with --replay)")
    g.add_argument("--replay", metavar="EP", help="the broker's request endpoint (with --backend)")
    g.add_argument(
        "--timeout-ms",
        type=int,
        default=5000,
        metavar="MS",
        help="wait this long for each answer from the broker [%(default)s]",
    )
    g.add_argument(
        "--server-key",
        metavar="FILE",
        help="the broker's public CURVE key file (default: from its bus.json, $ROSE_SERVER_KEY)",
    )
    g.add_argument(
        "--client-key",
        metavar="FILE",
        help="this client's NAME.key_secret for a CURVE broker (default: $ROSE_CLIENT_KEY)",
    )


def _bus_source(args: argparse.Namespace, *, idle_ms: int = 200) -> Any:
    from sinks.bus_source import BusSource

    if args.bus and (args.backend or args.replay):
        raise UsageError("give either --bus FILE or --backend/--replay, not both")
    _default_bus(args)  # $ROSE_BUS, then ./rose-store/bus.json, as rose status and tail do
    if not args.bus:
        if not (args.backend and args.replay):
            raise UsageError(
                "where is the broker? give --bus STORE/bus.json (or set ROSE_BUS), or "
                "--backend EP and --replay EP; none given and no ./rose-store/bus.json here"
            )
        check_endpoint(args.backend, "--backend endpoint")
        check_endpoint(args.replay, "--replay endpoint")
    try:
        if args.bus:
            info = read_bus_file(args.bus)
            check_endpoint(info["backend"], f"backend endpoint in {args.bus}")
            check_endpoint(info["replay"], f"replay endpoint in {args.bus}")
        return BusSource.connect(
            backend=args.backend,
            replay=args.replay,
            bus_file=args.bus,
            timeout_ms=args.timeout_ms,
            idle_ms=idle_ms,
            server_key=getattr(args, "server_key", None),
            client_key=getattr(args, "client_key", None),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _add_runtime_options(p: argparse.ArgumentParser, *, replay: bool = False) -> None:
    g = p.add_argument_group("delivery")
    g.add_argument(
        "--state",
        metavar="DIR",
        help="checkpoint and status directory"
        + (" (replays remember nothing without it)" if replay else " [depends on the kind]"),
    )
    g.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="tries per event before skipping it; 0 = retry forever [depends on the kind]",
    )
    g.add_argument(
        "--retry-max",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="cap of the exponential backoff between retries [%(default)s]",
    )
    g.add_argument(
        "--batch", type=int, default=500, metavar="N", help="events per backend call [%(default)s]"
    )
    g.add_argument(
        "--call-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a backend call running longer is reported as hung; the sink's other runs go on "
        "meanwhile [%(default)s]",
    )
    if not replay:
        g.add_argument(
            "--gap-grace",
            type=float,
            default=5.0,
            metavar="SECONDS",
            help="how long a missing event may be late before it is reported [%(default)s]",
        )


def _runtime_config(args: argparse.Namespace, module: ModuleType) -> Any:
    from sinks.runtime import RuntimeConfig

    attempts = args.max_attempts
    if attempts is None:
        attempts = getattr(module, "DEFAULT_MAX_ATTEMPTS", None)
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


def _build_sink(module: ModuleType, args: argparse.Namespace) -> Any:
    try:
        return module.build_sink(args)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None


def _install_signals(stop: Any) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %s: finishing the current batch, then exiting", signum)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _run_runtime(runtime: Any) -> Any:
    from sinks.state import OutputBusy, StateDirBusy

    try:
        return runtime.run()
    except (StateDirBusy, OutputBusy) as exc:
        raise UsageError(str(exc)) from None


# ------------------------------------------------------------------ rose sink


def register(subparsers: Any) -> None:
    _register_sink(subparsers)
    _register_replay(subparsers)
    _register_status(subparsers)
    _register_tail(subparsers)


def _register_sink(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sink",
        help="run a sink: follow the broker and write events to files, a tracker, ...",
        description=SINK_DESCRIPTION,
        epilog=SINK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    for name, module in available_kinds().items():
        k = kinds.add_parser(
            name,
            help=module.CLI_HELP,
            description=f"{SINK_DESCRIPTION}\nThis sink: {module.CLI_HELP}.",
            epilog=getattr(module, "CLI_EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_cli_arguments(k)
        _add_connection(k)
        _add_runtime_options(k)
        k.set_defaults(func=run_sink)
    p.set_defaults(func=lambda args: _need_kind(p))


def _need_kind(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    raise UsageError(f"which sink? one of: {', '.join(available_kinds())}")


def run_sink(args: argparse.Namespace) -> int:
    """``rose sink KIND``: follow the broker until SIGTERM/SIGINT."""
    from sinks.concurrent import make_runtime

    module = load_kind(args.kind)
    assert module is not None
    config = _runtime_config(args, module)
    sink = _build_sink(module, args)
    source = _bus_source(args)
    state = Path(args.state) if args.state else Path(module.default_state_dir(args))
    runtime = make_runtime(sink, source, state_dir=state, config=config, name=args.kind)
    _install_signals(runtime.stop)
    # One line, as the broker prints: where it reads, where it keeps its state.
    print(
        f"rose sink {args.kind}: following the broker of {args.bus or args.backend}; "
        f"checkpoint and status in {state} (see `rose status`); Ctrl-C or SIGTERM stops it",
        file=sys.stderr,
        flush=True,
    )
    counters = _run_runtime(runtime)
    log.info("rose sink %s stopped: %s", args.kind, counters)
    return 0


# ------------------------------------------------------------------ rose replay


def _register_replay(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay",
        help="replay event logs (files, spools, a broker store) into a sink or a broker",
        description=REPLAY_DESCRIPTION,
        epilog=REPLAY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument(
        "--client-key",
        metavar="FILE",
        help="with --publish to a CURVE broker: this client's NAME.key_secret "
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
    _add_runtime_options(p, replay=True)
    owners: dict[str, tuple[set[str], Any]] = {}
    for name, module in kinds.items():
        g = p.add_argument_group(f"--into {name} options")
        _add_kind_arguments(module, _SharedGroup(g, name, owners))
    p.set_defaults(func=run_replay, _kind_dests=owners)


class _SharedGroup:
    """An argument group that skips options another kind already added (same meaning)."""

    def __init__(self, group: Any, kind: str, owners: dict[str, tuple[set[str], Any]]) -> None:
        self.group = group
        self.kind = kind
        self.owners = owners

    def add_argument(self, *flags: str, **kw: Any) -> Any:
        try:
            action = self.group.add_argument(*flags, **kw)
        except argparse.ArgumentError:  # another kind has it: this kind owns it too
            long = next((f for f in flags if f.startswith("--")), flags[0])
            dest = kw.get("dest") or long.lstrip("-").replace("-", "_")
            if dest in self.owners:
                self.owners[dest][0].add(self.kind)
            return None
        self.owners.setdefault(action.dest, (set(), action.default))[0].add(self.kind)
        return action


def _add_kind_arguments(module: ModuleType, group: Any) -> None:
    fn = module.add_cli_arguments
    if "positional" in inspect.signature(fn).parameters:
        fn(group, positional=False)
    else:
        fn(group)


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


class ChainSource:
    """Several bounded sources one after another, with offsets renumbered."""

    refetchable = False

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def store_id(self) -> str | None:
        return None

    def subscribe(self, from_offset: int = 0) -> Iterator[Any]:
        n = 0
        for part in self.parts:
            for item in part.subscribe(0):
                if item is None:
                    continue
                item.offset = n
                n += 1
                yield item

    def run_events(self, run: str, from_seq: int) -> list[Any]:
        return []

    def head_offset(self) -> int | None:
        return None

    def close(self) -> None:
        for part in self.parts:
            part.close()


class _Progress:
    """A rich progress bar on stderr for large logs; silent otherwise."""

    MIN_BYTES = 4 * 1024 * 1024

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar: Any = None
        if enabled and total >= self.MIN_BYTES and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                TextColumn("replay"),
                BarColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self.task = self.bar.add_task("replay", total=total)
            self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _sources(
    logs: list[tuple[str, Path]], progress: _Progress | None = None
) -> tuple[ChainSource, int]:
    from sinks.sources import LogSource

    parts: list[Any] = []
    total = 0
    try:
        for kind, path in logs:
            if kind == "store":
                from sinks.bus_source import StoreSource

                parts.append(StoreSource(path))
            else:
                total += path.stat().st_size
                parts.append(LogSource([path], on_bytes=progress.advance if progress else None))
    except (ValueError, OSError) as exc:
        for part in parts:
            part.close()
        raise UsageError(str(exc)) from None
    return ChainSource(parts), total


def run_replay(args: argparse.Namespace) -> int:
    if args.client_key and not args.publish:
        raise UsageError("--client-key applies to --publish (a sink replayed --into needs no broker)")
    logs = _expand_logs(args.logs)
    total = sum(p.stat().st_size for kind, p in logs if kind == "log")
    progress = _Progress(total, not args.no_progress)
    try:
        source, _ = _sources(logs, progress)
        if args.publish:
            return _publish(args, source)
        return _replay_into(args, source, logs, progress)
    finally:
        progress.close()


def _replay_into(
    args: argparse.Namespace,
    source: ChainSource,
    logs: list[tuple[str, Path]] | None = None,
    progress: _Progress | None = None,
) -> int:
    from sinks.concurrent import make_runtime

    module = load_kind(args.into)
    assert module is not None
    foreign = [
        "--" + dest.replace("_", "-")
        for dest, (kinds, default) in args._kind_dests.items()
        if args.into not in kinds and getattr(args, dest, default) != default
    ]
    if foreign:
        verb = "does" if len(foreign) == 1 else "do"
        raise UsageError(f"{', '.join(foreign)} {verb} not apply to --into {args.into}")
    config = _runtime_config(args, module)
    sink = _build_sink(module, args)
    started = time.perf_counter()
    parallel = _claimed(sink, _try_parallel, args, module, logs or [], config, progress)
    if parallel is not None:
        source.close()
        sink.shutdown()
        c, bad_lines = parallel
        stopping = False
    else:
        runtime = make_runtime(sink, source, state_dir=args.state, config=config, name=args.into)
        _install_signals(runtime.stop)
        c = _run_runtime(runtime)
        bad_lines = _bad_lines(source)
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
    module: ModuleType,
    logs: list[tuple[str, Path]],
    config: Any,
    progress: _Progress | None,
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
        or not getattr(module, "PARALLEL_REPLAY", False)
        or any(kind != "log" for kind, _ in logs)
    ):
        return None
    paths = [p for _, p in logs]
    on_done = progress.advance if progress is not None else None
    builder = functools.partial(module.build_sink, args)
    return replay_parallel(builder, paths, config, jobs=jobs, on_done=on_done)


def _bad_lines(source: ChainSource) -> int:
    return sum(getattr(part, "bad_lines", 0) for part in source.parts)


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

    _install_signals(stop)
    n = 0
    started = time.perf_counter()
    try:
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


# ------------------------------------------------------------------ rose status


def _register_status(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="counters of the broker and of the sinks (applied, gaps, retries, lag)",
        description="Show what the broker stored and what each sink applied, with lag.",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(p)
    p.add_argument(
        "--state", action="append", metavar="DIR", help="a sink's state directory (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_status, timeout_ms=2000)


def _default_bus(args: argparse.Namespace) -> bool:
    """Fill args.bus from $ROSE_BUS or ./rose-store when nothing was given."""
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


def _sink_state_dirs(given: list[str] | None, bus: str | None = None) -> list[Path]:
    """The sinks to show: --state DIRs, else those found where rose puts them.

    That is ./.rose-sink/*/ and ./*/.rose-sink/ (the defaults of `rose sink`), and,
    for a bus file STORE/bus.json, STORE/../state/*/ (the layout of rose-daemons).
    """
    if given:
        return [Path(d) for d in given]
    found = [p.parent for p in STATE_ROOT.glob("*/status.json")]
    found += [p.parent for p in Path(".").glob("*/.rose-sink/status.json")]
    if bus and "://" not in bus:
        home = Path(bus).expanduser().parent.parent
        found += [p.parent for p in (home / "state").glob("*/status.json")]
    return sorted(set(found))


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sink_health(status: dict[str, Any], now: float | None = None) -> str:
    """running / stopped / not responding, from a sink's status file."""
    now = time.time() if now is None else now
    if status.get("phase") == "stopped":
        return "stopped"
    age = now - float(status.get("time") or 0)
    if not _pid_alive(status.get("pid")):
        return "dead (no process)"
    if age > 3 * max(1.0, float(status.get("interval_s") or 1.0)):
        return f"not responding ({age:.0f}s since last status)"
    return status.get("phase") or "running"


def run_status(args: argparse.Namespace) -> int:
    from sinks.state import read_status

    report: dict[str, Any] = {"broker": None, "sinks": []}
    broker_error = None
    if _default_bus(args):
        source = _bus_source(args)
        try:
            report["broker"] = source.client.stats()
        except Exception as exc:
            broker_error = str(exc)
        finally:
            source.close()
    for d in _sink_state_dirs(args.state, args.bus):
        status = read_status(d)
        if status is None:
            if args.state:
                raise UsageError(f"no sink status in {d} (is a sink using --state {d}?)")
            continue
        status["state_dir"] = str(d)
        status["health"] = sink_health(status)
        report["sinks"].append(status)
    if broker_error is not None:
        report["broker_error"] = broker_error
    nothing = report["broker"] is None and not report["sinks"]
    if args.json:
        import json

        print(json.dumps(report, indent=2, default=str))
    elif not nothing:  # with nothing to show, the error below is the one line
        _print_status(report)
    if nothing:
        if broker_error:
            raise UsageError(broker_error)
        raise UsageError(
            "nothing to report: no broker given or found (--bus FILE) and no sink state "
            "found (--state DIR)"
        )
    return 0 if broker_error is None else 1


def _print_status(report: dict[str, Any]) -> None:
    b = report.get("broker")
    if b is not None:
        print(
            f"broker pid {b.get('pid')} store {b.get('store_id')}: {b.get('events')} event(s) "
            f"of {len(b.get('runs') or {})} run(s); received {b.get('received')}, stored "
            f"{b.get('stored')}, duplicates {b.get('duplicates')}, rejected {b.get('rejected')}, "
            f"forwarded {b.get('forwarded')}, up {float(b.get('uptime_s') or 0):.0f}s"
        )
        for d in b.get("recovered") or []:
            span = f"{d.get('first')}..{d.get('last')}" if d.get("last") is not None else (
                f"from {d.get('first')} (a cut tail)"
            )
            print(f"  the store set aside damaged records at its start: offsets {span}"
                  f"{', in ' + d['quarantine'] if d.get('quarantine') else ''}")  # fmt: skip
    elif report.get("broker_error"):
        print(f"broker: {report['broker_error']}")
    for s in report["sinks"]:
        c = s.get("counters", {})
        print(
            f"sink {s.get('sink')} [{s['health']}] pid {s.get('pid')} ({s['state_dir']}): "
            f"applied {c.get('applied')}, duplicates {c.get('duplicates')}, gaps {c.get('gaps')}, "
            f"retries {c.get('retries')}, failed {c.get('failed')}, invalid {c.get('invalid')}, "
            f"lag {s.get('lag')} event(s){_latency_text(s.get('latency_s'))}"
        )
        for line in _sink_alerts(s):
            print(f"  {line}")
        for r in s.get("runs", [])[:10]:
            print("  " + _run_status_text(r))


def _latency_text(latency: Any) -> str:
    """Live latency in ms; an old event (caught up from the store) by its age instead."""
    if not isinstance(latency, (int, float)):
        return ""
    if latency < 1.0:
        return f", latency {latency * 1000:.0f} ms"
    return f", last event applied {_duration(latency)} after it was emitted"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _run_status_text(r: dict[str, Any]) -> str:
    """One run of a sink: where it is, its criterion metric, progress."""
    where = {"start": "started", "stop": "finished"}.get(r.get("kind"), "running")
    if r.get("iteration") is not None:
        where += f", iteration {r['iteration']}"
    value = r.get("metric_value")
    if r.get("metric_name") is not None:
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        where += f", {r['metric_name']}={shown}"
    flag = " RETRYING: " + r["last_error"] if r.get("retrying") else ""
    rate = r.get("events_per_s")
    rate_text = f"{rate:.1f}" if isinstance(rate, (int, float)) else str(rate)
    return (
        f"{r['run']}: {where}; next seq {r.get('next_seq')}, {rate_text} ev/s"
        f"{' (done)' if r.get('done') else ''}{flag}"
    )


def _sink_alerts(s: dict[str, Any]) -> list[str]:
    """What a user must know about a sink beyond its counters: losses, hung calls."""
    out = []
    for loss in s.get("store_losses") or []:
        out.append(
            f"the store lost {loss.get('lost')} event(s) after offset {loss.get('after')} "
            f"(store generation {loss.get('generation')}): re-read from there, events already "
            "applied skipped; lost events learners did not send again are missing"
        )
    for h in s.get("hung") or []:
        out.append(
            f"{h.get('kind')} call hung for {float(h.get('for_s') or 0):.0f} s on run "
            f"{h.get('run')} (its run waits; the others go on)"
        )
    maybe = (s.get("sink_stats") or {}).get("maybe_posted")
    if maybe:
        out.append(
            f"{maybe} post(s) got no reply and may not have reached Slack (not sent again, "
            "so none is posted twice)"
        )
    return out


# ------------------------------------------------------------------ rose tail


def _register_tail(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tail",
        help="follow live runs: one line per event (iteration, metric, events/s, lag)",
        description="Follow the broker's events as they arrive, one line per event.",
        epilog=TAIL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(p)
    p.add_argument("--run", metavar="PREFIX", default="", help="only runs whose id starts so")
    p.add_argument("--last", type=int, default=0, metavar="N", help="first show N stored events")
    p.add_argument("--from-start", action="store_true", help="show every stored event first")
    p.add_argument("--count", type=int, metavar="N", help="exit after N events")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="exit after this long")
    p.add_argument("--lines", action="store_true",
                   help="one line per event even on a terminal (the default when piped)")
    p.add_argument("--state", action="append", metavar="DIR",
                   help="a sink's state directory to show in the live view (repeatable; "
                   "default: the sinks found under .rose-sink/)")
    p.set_defaults(func=run_tail)


class _Rates:
    """Events per second per run over a sliding window of a few seconds."""

    WINDOW_S = 5.0

    def __init__(self) -> None:
        self._seen: dict[str, list[float]] = {}

    def add(self, run: str, now: float) -> float:
        times = self._seen.setdefault(run, [])
        times.append(now)
        cut = now - self.WINDOW_S
        while times and times[0] < cut:
            times.pop(0)
        if len(self._seen) > 10_000:  # bounded: forget the quietest runs
            for name in list(self._seen)[:1000]:
                del self._seen[name]
        span = max(times[-1] - times[0], 1.0)
        return len(times) / span


def format_tail_line(event: dict[str, Any], rate: float, now: float) -> str:
    body = event["body"]
    stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
    lag_ms = max(0.0, (now - event["ts"]) * 1000.0)
    kind = event["kind"]
    if kind == "iteration":
        what = f"iteration {body.get('iteration')}"
        if body.get("learner_id") is not None:
            what += f" learner {body['learner_id']}"
        if body.get("metric_name") is not None:
            value = body.get("metric_value")
            shown = f"{value:.6g}" if isinstance(value, float) else str(value)
            what += f" {body['metric_name']}={shown}"
    elif kind == "start":
        what = f"start {body.get('learner_type')}"
    else:
        what = f"stop {body.get('reason')}"
    return f"{stamp} {event['run']} #{event['seq']} {what} | {rate:.1f} ev/s | lag {lag_ms:.0f} ms"


def run_tail(args: argparse.Namespace) -> int:
    from rose.events import EventError, decode

    source = _bus_source(args, idle_ms=200)
    stopping = {"flag": False}

    def stop() -> None:
        stopping["flag"] = True

    _install_signals(stop)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    rates = _Rates()
    shown = 0
    board = live = None
    if sys.stdout.isatty() and not args.lines:
        from rich.live import Live

        from sinks.tail_view import TailBoard

        board = TailBoard(_sink_state_dirs(args.state, args.bus))
        live = Live(board.render(), refresh_per_second=4)
        live.__enter__()
    try:
        try:
            head = int(source.client.request(Op.HELLO)["next_offset"])
        except Exception as exc:
            raise UsageError(str(exc)) from None
        start = 0 if args.from_start else max(0, head - max(0, args.last))
        prefix = "rose." + args.run
        for ev in source.client.subscribe(start, prefix=prefix, idle_timeout_ms=200):
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
        source.close()
    return 0
