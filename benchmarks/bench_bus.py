"""Bus benchmarks (targets in docs/benchmarks.md), reported as ratios measured in one run.

1. ``BusTracker.on_iteration`` with a 20-key state: median and p99, against the raw
   floor (msgpack of the same event + a non-blocking PUB send) measured here, with
   the broker up, down, SIGSTOPped, and with a SIGSTOPped sink subscribed; each
   scenario runs in a process of its own, for this design and, side by side, for
   the previous one: the whole tree of ``--baseline REF`` (default
   ``DEFAULT_BASELINE``, ``--baseline none`` to skip), imported in that process.
2. Throughput learner -> broker -> store: events/s until the broker's store holds
   every event, with zero loss.
3. End-to-end latency learner -> broker -> subscriber at a paced 1,000 events/s.

The broker runs as its own process (``rose bus``), as in production, so it
does not share the learner's GIL.  Prints a table and writes JSON.

    scripts/bench bus [--quick] [--baseline REF] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq

from benchmarks.common import (
    ROOT,
    BrokerProc,
    add_output_args,
    baseline_tree,
    env_for,
    free_port,
    run_in,
    write_results,
)
from bus import BusClient, BusTracker
from bus.wire import make_header, topic_for
from rose.events import iteration_event
from rose.tracking import EventContext, IterationState, PipelineManifest, delivering

TARGET_MEDIAN_RATIO = 2.0
TARGET_P99_US = 100.0
TARGET_EVENTS_PER_S = 50_000
TARGET_LAT_P50_MS = 2.0
TARGET_LAT_P99_MS = 20.0


def _state(i: int) -> IterationState:
    return IterationState(
        iteration=i,
        metric_name="mean_squared_error_mse",
        metric_value=0.5 / (i + 1),
        metric_threshold=0.01,
        state={f"metric_{k}": k * 0.25 + i for k in range(20)},
    )


def _stats(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {
        "median_us": s[len(s) // 2] / 1000,
        "p99_us": s[int(len(s) * 0.99)] / 1000,
        "max_us": s[-1] / 1000,
    }


def _time_calls(fn: Callable[[int], None], n: int, warmup: int = 1000) -> dict[str, float]:
    for i in range(warmup):
        fn(i)
    gc.collect()
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return _stats(out)


def bench_floor(endpoint: str, n: int) -> dict[str, float]:
    """The raw floor: msgpack of the same event dict + the cheapest non-blocking send."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 1_000_000)
    sock.connect(endpoint)
    time.sleep(0.3)
    ctx_ev = EventContext(run="floor", seq=1, ts=time.time())
    event = iteration_event(ctx_ev, _state(1))
    topic = topic_for("floor", "iteration")
    more = zmq.SNDMORE | zmq.NOBLOCK

    def send(i: int) -> None:
        event["seq"] = i
        payload = msgpack.packb(event)
        sock.send(topic, more)
        sock.send(make_header("floor", i, "iteration"), more)
        sock.send(payload, zmq.NOBLOCK)

    try:
        return _time_calls(send, n)
    finally:
        sock.close(linger=0)
        ctx.term()


def bench_tracker(
    endpoint: str,
    n: int,
    after_start: Callable[[], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Time on_iteration as a learner drives it: under the learner's event context.

    The learner stamps one context per callback for all its trackers, so that
    stamping is outside the timed region; everything the tracker does is inside.
    """
    tracker = BusTracker(endpoint, start_wait_ms=2000, flush_timeout_ms=200, **kwargs)
    run = "bench-" + str(os.getpid())
    with delivering(EventContext(run=run, seq=0, ts=time.time(), origin={})):
        tracker.on_start(PipelineManifest(learner_type="Bench"))
    if after_start is not None:
        after_start()
    states = [_state(i) for i in range(64)]
    warmup = 1000
    ctxs = [EventContext(run=run, seq=i + 1, ts=time.time()) for i in range(n + warmup)]
    clock = time.perf_counter_ns
    samples = []
    try:
        gc.collect()
        for i, ctx in enumerate(ctxs):
            state = states[i % 64]
            with delivering(ctx):
                t0 = clock()
                tracker.on_iteration(state)
                dt = clock() - t0
            if i >= warmup:
                samples.append(dt)
    finally:
        tracker.close(timeout_ms=2000)  # outside the timed region
    result: dict[str, Any] = _stats(samples)
    stats = tracker.stats()
    result.update({k: v for k, v in stats.items() if k in ("sent", "resent", "dropped")})
    result["acknowledged"] = stats.get("acknowledged", 0)
    result["fallback"] = stats.get("fallback", 0)
    return result


def _one_scenario(spec: dict[str, Any]) -> dict[str, Any]:
    """One on_iteration scenario in this process (``--one SPEC``): SIGSTOP ``stop_pid`` after start."""
    pid = spec.get("stop_pid")
    after = None if pid is None else lambda: os.kill(pid, signal.SIGSTOP)
    return bench_tracker(spec["endpoint"], spec["n"], after, fallback=spec["fallback"])


def _sink_process(backend: str) -> subprocess.Popen:
    code = (
        "import sys, zmq\n"
        "s = zmq.Context().socket(zmq.SUB); s.setsockopt(zmq.SUBSCRIBE, b'rose.')\n"
        "s.setsockopt(zmq.RCVHWM, 1000); s.connect(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "while True: s.recv_multipart()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, backend], stdout=subprocess.PIPE, text=True
    )
    proc.stdout.readline()
    time.sleep(0.3)
    return proc


def _publisher_code() -> str:
    return (
        "import sys\nfrom bus import BusTracker\nfrom benchmarks.bench_bus import _state\n"
        "from rose.tracking import PipelineManifest\n"
        "n = int(sys.argv[2])\n"
        "t = BusTracker(sys.argv[1], start_wait_ms=5000, flush_timeout_ms=60000,"
        " max_pending=n + 10)\n"
        "t.on_start(PipelineManifest(learner_type='Bench'))\n"
        "st = [_state(i) for i in range(64)]\n"
        "print('go', flush=True)\n"
        "for i in range(n - 2): t.on_iteration(st[i % 64])\n"
        "t.on_stop(None, 'max_iter_reached'); t.close()\n"
        "print(t.dropped, flush=True)\n"
    )


def _settled_count(client: BusClient, quiet_s: float = 0.5, bound_s: float = 30.0) -> int:
    """The store's event count once it stops growing: late events of an earlier
    scenario (a SIGSTOPped broker catching up) must not count as this one's."""
    count, since = client.stats()["stored"], time.monotonic()
    deadline = since + bound_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.05)
        now = client.stats()["stored"]
        if now != count:
            count, since = now, time.monotonic()
    return count


def bench_throughput(
    broker: BrokerProc, publishers: int, per_publisher: int, root: Path = ROOT
) -> dict[str, Any]:
    with BusClient(broker.backend, broker.replay, timeout_ms=30_000) as client:
        before = _settled_count(client)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _publisher_code(), broker.frontend]
                + [str(per_publisher)],
                cwd=root,
                env=env_for(root),
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for _ in range(publishers)
        ]
        for p in procs:
            p.stdout.readline()  # connected, start sent
        t0 = time.perf_counter()
        total = publishers * per_publisher
        deadline = t0 + 300
        while client.stats()["stored"] - before < total and time.perf_counter() < deadline:
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        dropped = 0
        for p in procs:
            out, _ = p.communicate(timeout=120)
            dropped += int(out.strip().splitlines()[-1])
        stats = client.stats()
    stored = stats["stored"] - before
    return {
        "publishers": publishers,
        "events": total,
        "stored": stored,
        "dropped": dropped,
        "seconds": elapsed,
        "events_per_s": stored / elapsed,
    }


def bench_latency(broker: BrokerProc, n: int, rate: float = 1000.0) -> dict[str, float]:
    """Emit at ``rate`` per second; a subscriber thread-free loop measures arrival - emit."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"rose.")
    sub.connect(broker.backend)
    time.sleep(0.3)
    tracker = BusTracker(broker.frontend, start_wait_ms=2000)
    tracker.on_start(PipelineManifest(learner_type="Latency"))
    state = _state(0)
    sent: dict[int, int] = {}
    lat: list[int] = []
    period = 1.0 / rate
    next_t = time.perf_counter()
    seq = 0
    try:
        while seq < n or (len(lat) < len(sent) and time.perf_counter() < next_t + 2):
            now = time.perf_counter()
            if seq < n and now >= next_t:
                seq += 1
                sent[seq] = time.perf_counter_ns()
                tracker.on_iteration(state)
                next_t += period
            while sub.poll(0):
                frames = sub.recv_multipart()
                head = msgpack.unpackb(frames[1])
                if head["seq"] in sent:
                    lat.append(time.perf_counter_ns() - sent[head["seq"]])
    finally:
        tracker.close(timeout_ms=200)
        sub.close(linger=0)
        ctx.term()
    s = sorted(lat)
    return {
        "events": n,
        "received": len(s),
        "p50_ms": s[len(s) // 2] / 1e6 if s else float("nan"),
        "p99_ms": s[int(len(s) * 0.99)] / 1e6 if s else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    add_output_args(ap, "bus")
    ap.add_argument("--one", metavar="SPEC", help=argparse.SUPPRESS)  # one scenario, as JSON
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(_one_scenario(json.loads(args.one))))
        return 0
    designs: list[tuple[str, Path]] = [("now", ROOT)]
    baseline = None
    if args.baseline.lower() != "none":
        try:
            designs.append((args.baseline, baseline_tree(args.baseline)))
            baseline = args.baseline
        except RuntimeError as exc:
            print(f"previous design skipped: {exc}")
    n = 5_000 if args.quick else 20_000
    per_pub = 20_000 if args.quick else 100_000

    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "cpus": os.cpu_count(),
        "samples": n,
        "baseline": baseline,
        "load_avg_1m": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="rose-bench-") as tmp:
        broker = BrokerProc(Path(tmp) / "store")
        try:
            floor = bench_floor(broker.frontend, n)
            results["floor"] = floor
            scen: dict[str, Any] = {}
            fallback = str(Path(tmp) / "fallback")

            def run(name: str, endpoint: str, stop_broker: bool = False) -> None:
                for design, root in designs:  # side by side, same conditions
                    spec = {"endpoint": endpoint, "n": n, "fallback": fallback,
                            "stop_pid": broker.proc.pid if stop_broker else None}  # fmt: skip
                    try:  # stopped after the tracker connected: its socket fills, then the queue
                        scen[f"{name} [{design}]"] = run_in(
                            root, ["-m", "benchmarks.bench_bus", "--one", json.dumps(spec)]
                        )
                    finally:
                        if stop_broker:
                            broker.signal(signal.SIGCONT)

            run("broker up", broker.frontend)
            run("broker down", f"tcp://127.0.0.1:{free_port()}")
            sink = _sink_process(broker.backend)
            try:
                sink.send_signal(signal.SIGSTOP)
                run("sink SIGSTOPped", broker.frontend)
            finally:
                sink.send_signal(signal.SIGCONT)
                sink.kill()
                sink.wait()
                sink.stdout.close()
            run("broker SIGSTOPped", broker.frontend, stop_broker=True)
            for r in scen.values():
                r["median_ratio"] = r["median_us"] / floor["median_us"]
            results["on_iteration"] = scen
            results["throughput"] = []
            for pubs in (1, 2):
                for design, root in designs:
                    t = bench_throughput(broker, pubs, per_pub // pubs, root)
                    t["design"] = design
                    results["throughput"].append(t)
            results["latency_1k_per_s"] = bench_latency(broker, 2000 if args.quick else 5000)
        finally:
            broker.stop()

    _print(results)
    write_results(results, args.json)
    return 0


def _print(r: dict[str, Any]) -> None:
    f = r["floor"]
    print(f"\nBusTracker.on_iteration, 20-key state, {r['samples']} calls "
          f"(floor: msgpack + PUB send = {f['median_us']:.2f} us median, {f['p99_us']:.2f} us p99)")  # fmt: skip
    print(f"previous design: {r.get('baseline')}; load average {r['load_avg_1m']:.1f}")
    head = (
        f"{'scenario':<30} {'median us':>10} {'x floor':>8} {'p99 us':>8} {'sent':>7} "
        f"{'acked':>7} {'fallback':>8} {'dropped':>8}  target"
    )
    print(head)
    print("-" * len(head))
    for name, s in r["on_iteration"].items():
        ok = s["median_ratio"] <= TARGET_MEDIAN_RATIO and s["p99_us"] <= TARGET_P99_US
        print(
            f"{name:<30} {s['median_us']:>10.2f} {s['median_ratio']:>8.2f} {s['p99_us']:>8.1f} "
            f"{s['sent']:>7} {s['acknowledged']:>7} {s['fallback']:>8} {s['dropped']:>8}  "
            f"{'ok' if ok else 'MISSED'} "
            f"(<= {TARGET_MEDIAN_RATIO}x, p99 <= {TARGET_P99_US:.0f} us)"
        )
    print("\nthroughput learner -> broker -> store")
    for t in r["throughput"]:
        ok = t["events_per_s"] >= TARGET_EVENTS_PER_S and t["stored"] == t["events"]
        print(
            f"  {t['publishers']} publisher(s) [{t.get('design', 'acks')}]: {t['events']} events, "
            f"stored {t['stored']}, "
            f"dropped {t['dropped']}, {t['events_per_s']:,.0f} events/s  "
            f"{'ok' if ok else 'MISSED'} (>= {TARGET_EVENTS_PER_S:,}/s, zero loss)"
        )
    lat = r["latency_1k_per_s"]
    ok = lat["p50_ms"] <= TARGET_LAT_P50_MS and lat["p99_ms"] <= TARGET_LAT_P99_MS
    print(
        f"\nend-to-end latency at 1,000 events/s: p50 {lat['p50_ms']:.2f} ms, "
        f"p99 {lat['p99_ms']:.2f} ms ({lat['received']}/{lat['events']} received)  "
        f"{'ok' if ok else 'MISSED'} (p50 <= {TARGET_LAT_P50_MS} ms, p99 <= {TARGET_LAT_P99_MS} ms)"
    )


if __name__ == "__main__":
    sys.exit(main())
