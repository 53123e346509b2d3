"""Branin–Hoo GP active learning, tracked in MLflow through the bus.

The learner only publishes events (BusTracker: microseconds per call, whatever
MLflow is doing); a broker stores them and ``rose sink mlflow`` writes them to
MLflow in batches.  The MLflow run is the same as run_me_tracker.py's.

    pip install -e '.[mlflow]'   # from the repository clone
    python examples/integrations/tracking/mlflow/run_me_bus.py [--max-iter 30]

On its own, the script starts a broker (``rose bus``) and the sink (``rose sink
mlflow``) as child processes and stops them when the sink holds the run.  With
``--bus FILE`` it only runs the learner against your broker, as on a cluster::

    rose bus --store ~/rose-tracking/store &                                   # login node
    rose sink mlflow --bus ~/rose-tracking/store/bus.json --experiment surrogate-v1 &
    python run_me_bus.py --bus ~/rose-tracking/store/bus.json                  # compute job

MLflow gets ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the current directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The science problem is shared by every tracking example, one directory up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from branin_problem import BraninProblem, register_tasks  # noqa: E402
from radical.asyncflow import WorkflowEngine  # noqa: E402
from rhapsody.backends import ConcurrentExecutionBackend  # noqa: E402

from bus import BusTracker  # noqa: E402
from rose.al import SequentialActiveLearner  # noqa: E402
from sinks.state import read_status  # noqa: E402

EXPERIMENT = "surrogate-v1"
START_BOUND_S = 30.0
SINK_BOUND_S = 120.0
STOP_BOUND_S = 20.0


async def run_learner(bus_file: Path, max_iter: int, threshold: float, work_dir: Path) -> str:
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor())
    engine = await WorkflowEngine.create(backend, work_dir=str(work_dir))
    learner = SequentialActiveLearner(engine, run_name="branin-gp")
    problem = BraninProblem(seed=0)

    register_tasks(learner, problem, threshold)  # 1. the tasks of run_me.py

    # 2. Attach the tracker: it publishes to the broker and never waits for MLflow
    tracker = BusTracker(bus=bus_file)
    learner.add_tracker(tracker)

    # 3. Start the loop: no mlflow calls here
    try:
        async for state in learner.start(max_iter=max_iter):
            print(
                f"iteration {state.iteration:2d}  test MSE {state.metric_value:.5f}  "
                f"labeled {state.n_labeled:3d}"
            )
    finally:
        tracker.close()
        await engine.shutdown()
    return learner.run_id


def rose(*args: str, log: Path) -> subprocess.Popen:
    """Start ``rose ARGS`` as a child process logging to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", *args], stdout=out, stderr=subprocess.STDOUT
        )


def wait_for(predicate, bound_s: float, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + bound_s
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{what}: a child process exited with status {p.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not done within {bound_s:.0f} s")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: flush, checkpoint, exit 0
        try:
            proc.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_BOUND_S)


def sink_done(state_dir: Path, rose_run: str) -> bool:
    """True once the sink reports the run's stop event applied (its status file)."""
    status = read_status(state_dir) or {}
    return any(r.get("run") == rose_run and r.get("done") for r in status.get("runs", []))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument(
        "--bus", type=Path, help="an existing broker's bus.json: run the learner only"
    )
    parser.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path("runs-bus"), help="store, logs, session"
    )
    args = parser.parse_args()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    if args.bus:
        run = asyncio.run(run_learner(args.bus, args.max_iter, args.threshold, work))
        print(f"\npublished rose run {run}; your `rose sink mlflow` logs it to MLflow")
        return

    from rose.integrations.mlflow_writer import resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    store = work / "rose-store"
    bus_file = store / "bus.json"
    bus_file.unlink(missing_ok=True)  # a fresh broker writes a fresh one
    any_port = "tcp://127.0.0.1:*"
    broker = rose("bus", "--store", str(store), "--frontend", any_port, "--backend", any_port,
                  "--replay", any_port, log=work / "bus.log")  # fmt: skip
    procs = [broker]
    try:
        wait_for(bus_file.exists, START_BOUND_S, "starting the broker", procs)
        uri = ["--tracking-uri", tracking_uri]
        sink = rose("sink", "mlflow", "--bus", str(bus_file), *uri, "--experiment", EXPERIMENT,
                    "--state", str(work / "sink-state"), log=work / "sink.log")  # fmt: skip
        procs.append(sink)
        run = asyncio.run(run_learner(bus_file, args.max_iter, args.threshold, work))
        print("\nwaiting for the MLflow sink to log the run ...")
        state = work / "sink-state"
        wait_for(lambda: sink_done(state, run), SINK_BOUND_S, "MLflow sink", procs)
    finally:
        for p in reversed(procs):
            stop(p)
    print(f"MLflow:        experiment {EXPERIMENT}, run tagged rose.run_id={run}")
    print(f"tracking URI:  {tracking_uri}")
    print(f"logs:          {work / 'bus.log'}, {work / 'sink.log'}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
