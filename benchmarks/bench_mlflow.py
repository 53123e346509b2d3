"""MLflow benchmark: the sink's ingest against the in-process tracker and MLflow's own best loop.

Everything in one run, on two backends: SQLite (MLflow's embedded default)
and an ``mlflow server`` on a PostgreSQL 15 of its own (fsync on, as in
production), both on loopback and started here.  The runs carry a 20-key
state plus the criterion metric: 21 metrics per iteration.

1. in process: ``MLflowTracker.on_iteration`` as a learner calls it (one
   ``log_batch`` per iteration); iterations per second;
2. MLflow's own best: a plain ``MlflowClient.log_batch`` loop over the same
   runs and iterations, one call per iteration, and full calls (iterations
   packed up to 1000 metrics, as the sink packs them); iterations per second;
3. the sink replaying the same runs from JSONL logs (``rose replay --into
   mlflow``: real runtime, real decoding), with 1 worker on SQLite and 1, 2,
   4 and 8 workers on the server; events per second until all are applied;
   (tracker, full-call loop and sink rows alternate three times; medians);
4. a long replay (``--long-events``, default 200k events of 400 runs in
   waves of 16 running at once, 3 metrics per iteration, with a checkpoint
   directory) on each backend: its rate over the first and the last 10%.
   When the end is below 80% of the start, the same data goes through a plain
   ``log_batch`` loop too, to tell whether MLflow's store is what slows down.

Headline ratios: sink / in-process tracker (same backend; target >= 10 on
the server), sink / MLflow's best loop (target >= 1 on SQLite).

    python -m benchmarks.bench_mlflow [--quick] [--long-events N] [--json PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, write_results
from rose.events import iteration_event, start_event, stop_event, to_json_line
from rose.tracking import EventContext, IterationState, PipelineManifest, delivering

TARGET_RATIO_TRACKER = 10.0
TARGET_END_OVER_START = 0.8
STATE_KEYS = 20  # + the criterion metric: 21 metrics per iteration
LONG_STATE_KEYS = 2
LONG_WAVE = 16  # runs of the long replay running at once
WORKERS = (1, 2, 4, 8)
SERVER_WORKERS = 4  # mlflow server processes
SINK_BOUND_S = 3600.0
MANIFEST = PipelineManifest(learner_type="SequentialActiveLearner")


def _state(i: int, keys: int) -> IterationState:
    return IterationState(
        iteration=i,
        metric_name="mean_squared_error_mse",
        metric_value=0.5 / (i + 1),
        metric_threshold=0.01,
        state={f"metric_{k}": k * 0.25 + i for k in range(keys)},
    )


def _run_events(run: str, iterations: int, t0: float, keys: int) -> list[dict[str, Any]]:
    out = [start_event(EventContext(run, 0, t0, {"host": "bench", "pid": 1}), MANIFEST)]
    for i in range(iterations):
        out.append(iteration_event(EventContext(run, i + 1, t0 + i + 1), _state(i, keys)))
    out.append(stop_event(EventContext(run, iterations + 1, t0 + iterations + 1), None, "stopped"))
    return out


def _interleave(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for i in range(max(len(r) for r in runs)):
        out.extend(r[i] for r in runs if i < len(r))
    return out


def write_logs(folder: Path, runs: int, iterations: int, keys: int, wave: int) -> list[Path]:
    """The runs as JSONL logs, one per wave of ``wave`` runs running at once (interleaved)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    t0 = 1.7e9
    tag = os.urandom(3).hex()
    for w in range(0, runs, wave):
        per_run = [
            _run_events(f"{folder.name}-{tag}-{r:05d}", iterations, t0 + r, keys)
            for r in range(w, min(runs, w + wave))
        ]
        path = folder / f"wave-{w // wave:04d}.jsonl"
        with path.open("w") as f:
            f.writelines(to_json_line(e) for e in _interleave(per_run))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- the measurements


def bench_in_process(uri: str, iterations: int, keys: int) -> dict[str, Any]:
    """Per-iteration cost of MLflowTracker inside a learner (one log_batch per call)."""
    from rose.integrations.mlflow_tracker import MLflowTracker

    tracker = MLflowTracker(f"bench-inproc-{os.urandom(3).hex()}", tracking_uri=uri)
    run = f"inproc-{os.urandom(3).hex()}"
    t0 = time.time()
    with delivering(EventContext(run, 0, t0, {"host": "bench"})):
        tracker.on_start(MANIFEST)
    times = []
    for i in range(iterations):
        state = _state(i, keys)
        ctx = EventContext(run, i + 1, t0 + i + 1)
        start = time.perf_counter()
        with delivering(ctx):
            tracker.on_iteration(state)
        times.append(time.perf_counter() - start)
    with delivering(EventContext(run, iterations + 1, time.time())):
        tracker.on_stop(None, "stopped")
    return {
        "iterations": iterations,
        "median_ms": statistics.median(times) * 1e3,
        "iterations_per_s": 1.0 / statistics.fmean(times),
    }


def bench_plain_loop(
    uri: str, runs: int, iterations: int, keys: int, per_call: int, *, samples: bool = False
) -> dict[str, Any]:
    """MlflowClient alone: the same runs, ``per_call`` iterations per log_batch, one thread."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"bench-plain-{os.urandom(3).hex()}")
    marks: list[tuple[float, int]] = []
    done = 0
    start = time.perf_counter()
    for _ in range(runs):
        run_id = client.create_run(exp, start_time=1_700_000_000_000).info.run_id
        for i0 in range(0, iterations, per_call):
            metrics = []
            for i in range(i0, min(iterations, i0 + per_call)):
                ts = 1_700_000_000_000 + 1000 * i
                metrics.append(Metric("mean_squared_error_mse", 0.5 / (i + 1), ts, i))
                metrics.extend(Metric(f"metric_{k}", k * 0.25 + i, ts, i) for k in range(keys))
            client.log_batch(run_id, metrics=metrics)
            done += min(iterations, i0 + per_call) - i0
            if samples:
                marks.append((time.perf_counter(), done))
        client.set_terminated(run_id, "FINISHED")
    elapsed = time.perf_counter() - start
    out = {
        "iterations_per_call": per_call,
        "iterations": done,
        "seconds": elapsed,
        "iterations_per_s": done / elapsed,
        "metrics_per_s": done * (keys + 1) / elapsed,
    }
    if samples:
        out.update(_start_end(marks, done, start))
    return out


def bench_sink(
    uri: str, logs: list[Path], workers: int, state_dir: Path | None = None
) -> dict[str, Any]:
    """The sink replaying ``logs`` (as ``rose replay --into mlflow``): events/s, start vs end."""
    from sinks.concurrent import make_runtime
    from sinks.mlflow_sink import MLflowSink
    from sinks.sources import LogSource

    sink = MLflowSink(uri, f"bench-sink-{os.urandom(3).hex()}", workers=workers)
    sink._experiment_id()  # schema and experiment exist before the clock starts
    runtime = make_runtime(sink, LogSource(logs), state_dir=state_dir)
    total = sum(1 for p in logs for _ in p.open("rb"))
    marks: list[tuple[float, int]] = []
    worker = threading.Thread(target=runtime.run, name="bench-mlflow-sink", daemon=True)
    start = time.perf_counter()
    worker.start()
    deadline = time.monotonic() + SINK_BOUND_S
    while worker.is_alive():
        marks.append((time.perf_counter(), runtime.counters.applied))
        if time.monotonic() > deadline:
            runtime.stop()
            worker.join(60)
            raise RuntimeError(f"sink applied {runtime.counters.applied} of {total} in time")
        worker.join(0.25)
    elapsed = time.perf_counter() - start
    c = runtime.counters
    if c.failed or c.gaps or c.applied != total:
        raise RuntimeError(f"sink lost or skipped events: {c}")
    marks.append((start + elapsed, c.applied))
    out = {
        "workers": workers,
        "events": total,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
        "retries": c.retries,
    }
    if state_dir is not None:
        out["checkpoint_bytes"] = (state_dir / "checkpoint.json").stat().st_size
    out.update(_start_end(marks, total, start))
    return out


def _median(results: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The result with the median ``key``, with every sample's ``key`` alongside."""
    ranked = sorted(results, key=lambda r: r[key])
    out = dict(ranked[(len(ranked) - 1) // 2])
    out["samples"] = [round(r[key], 1) for r in results]
    return out


def _start_end(marks: list[tuple[float, int]], total: int, t_start: float) -> dict[str, float]:
    """Rates over each tenth of the work, from (time, done) samples; first vs last."""

    def time_at(n: float) -> float:
        prev_t, prev_n = t_start, 0
        for t, done in marks:
            if done >= n:
                if done == prev_n:
                    return t
                return prev_t + (t - prev_t) * (n - prev_n) / (done - prev_n)
            prev_t, prev_n = t, done
        return marks[-1][0]

    edges = [time_at(total * k / 10) for k in range(11)]
    deciles = [total / 10 / max(1e-9, t1 - t0) for t0, t1 in zip(edges[:-1], edges[1:], strict=True)]
    start_rate, end_rate = deciles[0], deciles[-1]
    return {
        "start_per_s": start_rate,
        "end_per_s": end_rate,
        "end_over_start": end_rate / start_rate,
        "per_decile_per_s": [round(x, 1) for x in deciles],
    }


# ---------------------------------------------------------------- the run


class Backends:
    """SQLite in the temp folder, and a PostgreSQL-backed mlflow server started here."""

    def __init__(self, tmp: Path, *, postgres: bool) -> None:
        self.tmp = tmp
        self.pg: Any = None
        self.server: Any = None
        self.why_no_server: str | None = None
        if postgres:
            from tests.mlflow.servers import MLflowServer, PostgresServer, postgres_missing

            self.why_no_server = postgres_missing()
            if self.why_no_server is None:
                try:
                    self.pg = PostgresServer(durable=True)
                    self.pg.start()
                    root = tmp / "server"
                    root.mkdir()
                    db = self.pg.create_database("mlflow")
                    self.server = MLflowServer(root, backend_uri=db, workers=SERVER_WORKERS)
                    self.server.start()
                except BaseException:
                    self.close()
                    raise
        else:
            self.why_no_server = "--no-server"

    def sqlite(self, name: str) -> str:
        return f"sqlite:///{self.tmp / name}.db"

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server = None
        if self.pg is not None:
            self.pg.stop()
            self.pg = None


def measure_backend(
    results: dict[str, Any], name: str, uri_for: Any, logs: list[Path], long_logs: list[Path],
    sizes: dict[str, int], workers: tuple[int, ...], tmp: Path,
) -> None:  # fmt: skip
    runs, iters = sizes["runs"], sizes["iterations"]
    full = max(1, 1000 // (STATE_KEYS + 1))
    reps = sizes["repeats"]
    print(f"[{name}] plain loop, one call per iteration...", flush=True)
    # One call per iteration is slow: two of the runs are enough for its rate.
    b: dict[str, Any] = {
        "plain_per_iteration": bench_plain_loop(uri_for("plain1"), 2, iters, STATE_KEYS, 1)
    }
    # The rest alternate, `repeats` times: the median of each is reported, so a burst of
    # load from elsewhere on the machine does not land on one row only.
    samples: dict[str, list[dict[str, Any]]] = {"in_process": [], "plain_full_calls": []}
    samples.update({f"sink{n}": [] for n in workers})
    for rep in range(reps):
        print(f"[{name}] round {rep + 1}/{reps}: tracker, plain loop, sink...", flush=True)
        samples["in_process"].append(
            bench_in_process(uri_for(f"inproc{rep}"), sizes["inproc"], STATE_KEYS)
        )
        samples["plain_full_calls"].append(
            bench_plain_loop(uri_for(f"plainN{rep}"), runs, iters, STATE_KEYS, full)
        )
        for n in workers:
            samples[f"sink{n}"].append(bench_sink(uri_for(f"sink{n}-{rep}"), logs, n))
    b["in_process"] = _median(samples["in_process"], "iterations_per_s")
    b["plain_full_calls"] = _median(samples["plain_full_calls"], "iterations_per_s")
    b["sink"] = [_median(samples[f"sink{n}"], "events_per_s") for n in workers]
    b["mlflow_best"] = max(
        b["plain_per_iteration"]["iterations_per_s"], b["plain_full_calls"]["iterations_per_s"]
    )
    best = max(b["sink"], key=lambda s: s["events_per_s"])
    b["best_workers"] = best["workers"]
    b["sink_over_in_process"] = best["events_per_s"] / b["in_process"]["iterations_per_s"]
    b["sink_over_mlflow_best"] = best["events_per_s"] / b["mlflow_best"]
    print(f"[{name}] long replay, {best['workers']} worker(s)...", flush=True)
    state = tmp / f"state-{name}"
    b["long"] = bench_sink(uri_for("long"), long_logs, best["workers"], state)
    if b["long"]["end_over_start"] < TARGET_END_OVER_START:
        print(f"[{name}] the long replay slowed down: the same data through MlflowClient...")
        b["long_plain"] = bench_plain_loop(
            uri_for("longplain"), sizes["long_runs"], sizes["long_iterations"],
            LONG_STATE_KEYS, max(1, 1000 // (LONG_STATE_KEYS + 1)), samples=True,
        )  # fmt: skip
    results["backends"][name] = b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, ~2 minutes)")
    ap.add_argument(
        "--long-events", type=int, metavar="N", help="events of the long replay [200000; quick 20000]"
    )
    ap.add_argument("--no-server", action="store_true", help="SQLite only (no PostgreSQL here)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "mlflow.json"))
    args = ap.parse_args(argv)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    long_events = args.long_events or (20_000 if args.quick else 200_000)
    long_runs = max(LONG_WAVE, round(long_events / 500))  # ~500 events per run
    long_iterations = max(1, long_events // long_runs - 2)
    sizes = {
        "inproc": 30 if args.quick else 100,
        "repeats": 1 if args.quick else 3,
        "runs": 8,
        "iterations": 40 if args.quick else 250,
        "long_runs": long_runs,
        "long_iterations": long_iterations,
    }
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "cpus": os.cpu_count(),
        "sizes": sizes,
        "metrics_per_iteration": STATE_KEYS + 1,
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="rose-bench-mlflow-") as tmp_name:
        tmp = Path(tmp_name)
        logs = write_logs(tmp / "backlog", sizes["runs"], sizes["iterations"], STATE_KEYS, 8)
        long_logs = write_logs(tmp / "long", long_runs, long_iterations, LONG_STATE_KEYS, LONG_WAVE)
        backends = Backends(tmp, postgres=not args.no_server)
        try:
            measure_backend(results, "sqlite", backends.sqlite, logs, long_logs, sizes, (1,), tmp)
            if backends.server is not None:
                uri = backends.server.uri
                measure_backend(
                    results, "server+postgresql", lambda _name: uri, logs, long_logs, sizes,
                    WORKERS, tmp,
                )  # fmt: skip
            else:
                results["server_skipped"] = backends.why_no_server
        finally:
            backends.close()
    _print(results)
    write_results(results, args.json)
    return 0


def _print(r: dict[str, Any]) -> None:
    print(
        f"\nMLflow {r['mlflow']}, {r['metrics_per_iteration']} metrics per iteration; "
        "rates in iterations (events) per second, measured in this run"
    )
    head = f"{'backend':<18}  {'measure':<44}  {'rate/s':>9}  {'metrics/s':>9}"
    print(head)
    print("-" * len(head))
    m = r["metrics_per_iteration"]
    for name, b in r["backends"].items():
        rows = [
            ("in-process MLflowTracker", b["in_process"]["iterations_per_s"]),
            ("plain log_batch loop, 1 iteration per call",
             b["plain_per_iteration"]["iterations_per_s"]),
            (f"plain log_batch loop, {b['plain_full_calls']['iterations_per_call']} "
             "iterations per call", b["plain_full_calls"]["iterations_per_s"]),
            *((f"sink, {s['workers']} worker(s)", s["events_per_s"]) for s in b["sink"]),
        ]  # fmt: skip
        for label, rate in rows:
            print(f"{name:<18}  {label:<44}  {rate:>9.1f}  {rate * m:>9.0f}")
    print()
    for name, b in r["backends"].items():
        lg = b["long"]
        print(
            f"{name}: sink ({b['best_workers']} worker(s)) = {b['sink_over_in_process']:.1f}x the "
            f"in-process tracker, {b['sink_over_mlflow_best']:.2f}x MLflow's best loop; long "
            f"replay of {lg['events']} events ({lg['workers']} worker(s)): "
            f"{lg['start_per_s']:.0f}/s at the start, {lg['end_per_s']:.0f}/s at the end "
            f"({lg['end_over_start']:.0%}), checkpoint {lg['checkpoint_bytes']} bytes"
        )
        if "long_plain" in b:
            lp = b["long_plain"]
            print(
                f"  plain MlflowClient loop over the same data: {lp['start_per_s']:.0f}/s at "
                f"the start, {lp['end_per_s']:.0f}/s at the end ({lp['end_over_start']:.0%})"
            )
    if "server_skipped" in r:
        print(f"server+postgresql skipped: {r['server_skipped']}")


if __name__ == "__main__":
    raise SystemExit(main())
