"""Sink benchmarks (docs/benchmarks.md): file-sink catch-up from the store, and replay.

1. Catch-up: a broker process (``rose bus``) holds N events of several
   runs in its store; a file sink (the real runtime, in this process) starts
   from offset 0 and writes every run's JSONL file.  events/s until the last
   event is applied.
2. Replay: the same N events as JSONL logs (one per run, the file sink's own
   output) replayed into a new file sink, as ``rose replay LOG... --into file``
   does.  Target: >= 100,000 events/s.

Events are iteration events with a 20-key state, like the bus benchmarks.
Prints a table and writes JSON; run it alone or through scripts/bench.

    python -m benchmarks.bench_sinks [--quick] [--baseline REF] [--json PATH]

With ``--baseline REF`` (default ``DEFAULT_BASELINE``; ``none`` to skip) the same
benchmarks run in turn on the whole tree of that commit, the previous design (in
a process of their own), and on this one, ``--rounds`` times; a table puts both
side by side, round by round.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    BrokerProc,
    add_output_args,
    baseline_tree,
    run_in,
    write_results,
)

TARGET_REPLAY_EVENTS_PER_S = 100_000
RUNS = 8


def make_events(n: int, runs: int = RUNS) -> list[dict[str, Any]]:
    """``n`` events over ``runs`` runs: start, iterations, stop, interleaved by run."""
    from rose.events import iteration_event, start_event, stop_event
    from rose.tracking import EventContext, IterationState, PipelineManifest

    per_run = max(3, n // runs)
    out: list[dict[str, Any]] = []
    t0 = 1.7e9
    for r in range(runs):
        run = f"bench{r:02d}-{os.urandom(4).hex()}"
        out.append(start_event(EventContext(run, 0, t0, {"host": "h"}), PipelineManifest("AL")))
        for i in range(per_run - 2):
            state = IterationState(
                iteration=i,
                metric_name="mean_squared_error_mse",
                metric_value=0.5 / (i + 1),
                metric_threshold=0.01,
                state={f"metric_{k}": k * 0.25 + i for k in range(20)},
            )
            out.append(iteration_event(EventContext(run, i + 1, t0 + i), state))
        out.append(
            stop_event(EventContext(run, per_run - 1, t0 + per_run), None, "max_iter_reached")
        )
    # interleave runs, as a broker serving several learners stores them
    by_run: dict[str, list[dict[str, Any]]] = {}
    for e in out:
        by_run.setdefault(e["run"], []).append(e)
    mixed = []
    for i in range(per_run):
        mixed.extend(events[i] for events in by_run.values() if i < len(events))
    return mixed


def bench_replay(logs: Path, work: Path) -> dict[str, Any]:
    """Replay the file sink's own output (``logs/*.jsonl``) into a new file sink."""
    from sinks.file_sink import FileSink
    from sinks.replay import default_jobs, replay_parallel

    try:
        from sinks.replay import ChainSource
    except ImportError:  # a baseline tree from before the CLI package kept it in the CLI
        from sinks.cli import ChainSource
    from sinks.runtime import RuntimeConfig, SinkRuntime
    from sinks.sources import LogSource

    paths = sorted(logs.glob("*.jsonl"))
    size = sum(p.stat().st_size for p in paths)
    # What `rose replay LOG... --into file` does: split by run over the CPUs, else one process.
    jobs = default_jobs()
    t0 = time.perf_counter()
    done = replay_parallel(
        functools.partial(FileSink, work / "replayed"), paths, RuntimeConfig(), jobs=jobs
    )
    if done is None:
        jobs = 1
        source = ChainSource([LogSource([p]) for p in paths])
        counters = SinkRuntime(FileSink(work / "replayed"), source).run()
    else:
        counters = done[0]
    elapsed = time.perf_counter() - t0
    same = all((work / "replayed" / p.name).read_bytes() == p.read_bytes() for p in paths)
    return {
        "events": counters.applied,
        "processes": jobs,
        "bytes": size,
        "seconds": elapsed,
        "events_per_s": counters.applied / elapsed,
        "identical_output": same,
    }


def bench_catch_up(events: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    from bus import BusClient, BusTracker
    from sinks.bus_source import BusSource
    from sinks.file_sink import FileSink
    from sinks.runtime import SinkRuntime

    broker = BrokerProc(work / "store")
    try:
        tracker = BusTracker(bus=broker.bus_file)
        for e in events:
            tracker.emit(e)
            if tracker.pending >= 5000:
                tracker.flush(30_000)
        tracker.flush(30_000)
        tracker.close()
        with BusClient(broker.backend, broker.replay, timeout_ms=30_000) as c:
            deadline = time.monotonic() + 120
            while c.stats()["events"] < len(events):
                if time.monotonic() > deadline:
                    raise RuntimeError("the store did not receive every event")
                time.sleep(0.05)
        source = BusSource.connect(bus_file=broker.bus_file, timeout_ms=30_000)
        runtime = SinkRuntime(FileSink(work / "caught-up"), source, state_dir=work / "state")
        t = threading.Thread(target=runtime.run, name="bench-sink", daemon=True)
        t0 = time.perf_counter()
        t.start()
        deadline = time.monotonic() + 300
        while runtime.counters.applied < len(events):
            if time.monotonic() > deadline or not t.is_alive():
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        applied = runtime.counters.applied
        runtime.stop()
        t.join(30)
    finally:
        broker.stop()
    return {
        "events": applied,
        "seconds": elapsed,
        "events_per_s": applied / elapsed,
        "zero_loss": applied == len(events),
    }


def measure(n: int) -> dict[str, Any]:
    """Both benchmarks over ``n`` events, in this process's design."""
    events = make_events(n)
    total = len(events)
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "events": total,
        "runs": RUNS,
    }
    with tempfile.TemporaryDirectory(prefix="rose-bench-sinks-") as tmp:
        work = Path(tmp)
        (work / "r").mkdir()
        (work / "c").mkdir()
        results["catch_up_into_file"] = bench_catch_up(events, work / "c")
        del events  # the replay processes should not inherit them
        gc.collect()
        os.sync()
        results["replay_into_file"] = bench_replay(work / "c" / "caught-up", work / "r")
    replay = results["replay_into_file"]
    replay["target_events_per_s"] = TARGET_REPLAY_EVENTS_PER_S
    replay["meets_target"] = replay["events_per_s"] >= TARGET_REPLAY_EVENTS_PER_S
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    ap.add_argument("--events", type=int, help="events per benchmark [200000, quick 40000]")
    ap.add_argument(
        "--rounds", type=int, default=2, help="with a baseline: rounds of previous, then this [2]"
    )
    add_output_args(ap, "sinks")
    ap.add_argument("--stdout-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = args.events or (40_000 if args.quick else 200_000)
    if args.stdout_json:  # one run for another process's side-by-side table
        print(json.dumps(measure(n)))
        return 0
    side_by_side = args.baseline.lower() != "none"
    results = _side_by_side(n, args) if side_by_side else measure(n)
    replay = results["replay_into_file"]
    catch = results["catch_up_into_file"]
    rows = [
        ("replay JSONL -> file sink", replay["events_per_s"], f">= {TARGET_REPLAY_EVENTS_PER_S:,}",
         "ok" if replay["meets_target"] and replay["identical_output"] else "MISS"),
        ("store catch-up -> file sink", catch["events_per_s"], "", "ok" if catch["zero_loss"] else "LOSS"),
    ]  # fmt: skip
    print(f"\nsinks: {results['events']:,} events of {RUNS} runs (20-key iteration states)")
    print(f"{'benchmark':32} {'events/s':>12}  {'target':>12}  result")
    for name, rate, target, verdict in rows:
        print(f"{name:32} {rate:12,.0f}  {target:>12}  {verdict}")
    write_results(results, args.json)
    return 0


def _side_by_side(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of the previous design's tree (a process of its own), then this one, in turn.

    Alternating spreads a changing machine load over both designs; the table
    shows every round and the median ratio.  Returns this design's last round.
    """
    try:
        tree = baseline_tree(args.baseline)
    except RuntimeError as exc:
        print(f"previous design skipped: {exc}")
        return measure(n)
    argv = ["-m", "benchmarks.bench_sinks", "--stdout-json", "--events", str(n)]
    keys = (("replay_into_file", "replay JSONL -> file sink"),
            ("catch_up_into_file", "store catch-up -> file sink"))  # fmt: skip
    rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for _ in range(max(1, args.rounds)):  # both in processes of their own, alike
        rounds.append((run_in(tree, argv), run_in(ROOT, argv)))
    print(f"\nside by side with the previous design ({args.baseline}), events/s, "
          f"{len(rounds)} round(s) of previous then now")  # fmt: skip
    print(f"{'benchmark':32} {'now':>12} {args.baseline:>12}  now/previous (load average)")
    for key, name in keys:
        ratios = []
        for prev, now in rounds:
            a, b = now[key]["events_per_s"], prev[key]["events_per_s"]
            ratios.append(a / b)
            print(f"{name:32} {a:12,.0f} {b:12,.0f}  {a / b:.2f} ({now['load_avg_1m']:.1f})")
        print(f"{'':32} {'':12} {'':12}  median {statistics.median(ratios):.2f}")
    results = dict(rounds[-1][1])
    results["baseline"] = {"ref": args.baseline, "rounds": [prev for prev, _ in rounds],
                           "now_rounds": [now for _, now in rounds]}  # fmt: skip
    return results


if __name__ == "__main__":
    sys.exit(main())
