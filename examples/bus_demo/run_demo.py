"""The main job end to end: parallel active learners tracked over the bus.

    python examples/bus_demo/run_demo.py [--learners 3] [--out demo-output] [--chaos]

Starts, as separate processes on loopback, the broker (`rose bus`), a file sink
and an MLflow sink (embedded SQLite); runs a ParallelActiveLearner of Gaussian-
process surrogates of the Branin–Hoo function, publishing through a BusTracker;
shows live progress; then checks that every event reached both sinks exactly
once, draws the curves and prints a summary.  With --chaos the MLflow sink is
killed (kill -9) mid-run and restarted, and the summary shows nothing was lost.
Every process it started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations" / "tracking"))

from branin_problem import BraninProblem  # noqa: E402

from bus import BusTracker  # noqa: E402
from rose import LearnerConfig, TaskConfig, TrackerBase  # noqa: E402
from rose.al import ParallelActiveLearner  # noqa: E402
from rose.eventlog import read_events  # noqa: E402
from rose.execution import engine  # noqa: E402
from rose.metrics import MEAN_SQUARED_ERROR_MSE  # noqa: E402
from rose.tracking import event_context  # noqa: E402

EXPERIMENT = "rose-demo"
ANY_PORT = "tcp://127.0.0.1:*"


class DemoError(RuntimeError):
    """Something the demo could not do; the message says what and where to look."""


# ------------------------------------------------------------------ daemons


class Daemons:
    """The processes the demo starts: each logs to OUT/logs/NAME.log; all stop on exit."""

    def __init__(self, out: Path) -> None:
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.argv: dict[str, list[str]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "cli", *args]
        log = (self.logs / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # Ctrl-C reaches the demo, which stops them
        log.close()
        self.procs[name], self.argv[name] = proc, list(args)
        return proc

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self, name: str) -> None:
        self.start(name, *self.argv[name])

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with status {proc.returncode}: see {self.logs / name}.log")

    def stop_all(self, timeout: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def __enter__(self) -> Daemons:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_for(predicate, what: str, daemons: Daemons, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        daemons.check_alive()
        time.sleep(0.1)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what} (logs: {daemons.logs})")


def read_status(state: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return None


def run_status(state: Path, run: str) -> dict[str, Any] | None:
    status = read_status(state) or {}
    return next((r for r in status.get("runs", []) if r["run"] == run), None)


# ------------------------------------------------------------------ the science


def build_learner(eng: Any, learners: int, pace: float) -> tuple[ParallelActiveLearner, list]:
    """Parallel GP surrogates of Branin–Hoo; each learner its own data, seed and batch size."""
    problems = [BraninProblem(seed=i, batch=1 + i % 3) for i in range(learners)]
    learner = ParallelActiveLearner(eng, parallel_learners=learners, run_name="branin-demo")

    @learner.simulation_task(as_executable=False, log_params={"function": "branin-hoo"})
    async def simulation(*args, learner: int, **kwargs):
        time.sleep(pace)  # stands in for an expensive simulation
        return problems[learner].simulate()

    @learner.training_task(as_executable=False, log_params={"model": "GP", "kernel": "C*RBF+White"})
    async def training(*args, learner: int, **kwargs):
        return problems[learner].train()

    @learner.active_learn_task(as_executable=False, log_params={"acquisition": "max std"})
    async def active_learn(*args, learner: int, **kwargs):
        return problems[learner].active_learn()

    @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.01, as_executable=False)
    async def check_mse(*args, learner: int, **kwargs):
        return problems[learner].test_mse()

    return learner, problems


def learner_configs(learners: int) -> list[LearnerConfig]:
    def cfg(i: int) -> TaskConfig:
        return TaskConfig(kwargs={"learner": i})

    return [
        LearnerConfig(simulation=cfg(i), training=cfg(i), active_learn=cfg(i), criterion=cfg(i))
        for i in range(learners)
    ]


# ------------------------------------------------------------------ progress


class Progress:
    """Live table on a terminal, one line per iteration otherwise."""

    def __init__(self, learners: int, states: dict[str, Path], live: bool) -> None:
        self.rows: dict[Any, dict[str, Any]] = {i: {"iteration": "-", "mse": None, "labeled": "-",
                                                    "status": "starting"} for i in range(learners)}
        self.states = states
        self.notes: list[str] = []
        self.live = None
        if live:
            from rich.live import Live

            self.live = Live(self._render(), refresh_per_second=8, transient=False)

    def __enter__(self) -> Progress:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.live is None:
            print(f"  ! {text}", flush=True)

    def update(self, state: Any) -> None:
        row = self.rows[state.learner_id]
        row.update(iteration=state.iteration, mse=state.metric_value, labeled=state.get("n_labeled", "-"),
                   status="criterion met" if state.should_stop else "learning")
        if self.live is None:
            print(f"  learner {state.learner_id}  iteration {state.iteration:2d}  "
                  f"test MSE {state.metric_value:.5f}  labeled {row['labeled']}", flush=True)
        else:
            self.refresh()

    def refresh(self) -> None:
        if self.live:
            self.live.update(self._render())

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(title="learners: GP surrogates of Branin–Hoo, stop at test MSE < 0.01",
                      min_width=72)
        for col in ("learner", "iteration", "test MSE", "labeled", "status"):
            table.add_column(col, justify="right" if col != "status" else "left")
        for lid, row in self.rows.items():
            mse = "-" if row["mse"] is None else f"{row['mse']:.5f}"
            table.add_row(str(lid), str(row["iteration"]), mse, str(row["labeled"]), row["status"])
        sinks = Table(title="sinks (separate processes, fed by the broker)", min_width=72)
        for col in ("sink", "applied", "lag", "events/s"):
            sinks.add_column(col, justify="right" if col != "sink" else "left")
        for name, state in self.states.items():
            st = read_status(state)
            if st is None:
                sinks.add_row(name, "starting…", "", "")
                continue
            rate = sum(r.get("events_per_s", 0) for r in st.get("runs", []))
            sinks.add_row(name, str(st["counters"]["applied"]), str(st.get("lag", "")), f"{rate:.0f}")
        return Group(table, sinks, *self.notes)


# ------------------------------------------------------------------ the run


@dataclass
class DemoResult:
    run: str
    reason: str
    out: Path
    jsonl: Path
    plot: Path
    mlflow_uri: str
    iterations: dict[Any, int] = field(default_factory=dict)
    final_mse: dict[Any, float] = field(default_factory=dict)
    stored_events: int = 0
    file_events: int = 0
    file_unique: int = 0
    mlflow_steps: dict[Any, int] = field(default_factory=dict)
    chaos: str | None = None

    @property
    def nothing_lost(self) -> bool:
        total = sum(self.iterations.values())
        return (
            self.file_events == self.file_unique == self.stored_events == total + 2
            and self.mlflow_steps == self.iterations
        )


async def run_demo(
    out: Path,
    learners: int = 3,
    max_iter: int = 30,
    pace: float = 0.3,
    chaos: bool = False,
    live: bool = True,
) -> DemoResult:
    out = out.resolve()
    store, runs_dir = out / "store", out / "runs"
    states = {"file": out / "state" / "file", "mlflow": out / "state" / "mlflow"}
    mlflow_uri = f"sqlite:///{out / 'mlflow.db'}"
    bus_json = store / "bus.json"
    for stale in (bus_json, *(s / "status.json" for s in states.values())):
        stale.unlink(missing_ok=True)

    with Daemons(out) as daemons:
        daemons.start("bus", "bus", "--store", str(store),
                      "--frontend", ANY_PORT, "--backend", ANY_PORT, "--replay", ANY_PORT)
        wait_for(bus_json.exists, "the broker's bus.json", daemons, timeout=30)
        daemons.start("file-sink", "sink", "file", "--bus", str(bus_json), "--out", str(runs_dir),
                      "--state", str(states["file"]))
        daemons.start("mlflow-sink", "sink", "mlflow", "--bus", str(bus_json), "--tracking-uri",
                      mlflow_uri, "--experiment", EXPERIMENT, "--state", str(states["mlflow"]))

        tracker = BusTracker(bus=str(bus_json))
        chaos_note = None
        async with engine(work_dir=out / "sessions") as eng:
            learner, _ = build_learner(eng, learners, pace)
            learner.add_tracker(tracker)
            last = LastSeq()
            learner.add_tracker(last)
            with Progress(learners, states, live) as progress:
                progress.note(f"run {learner.run_id}: broker, file sink and MLflow sink running; "
                              f"learner publishing through BusTracker")
                killed = False
                async for state in learner.start(parallel_learners=learners, max_iter=max_iter,
                                                 learner_configs=learner_configs(learners)):
                    progress.update(state)
                    if chaos and not killed and state.iteration == 2:
                        daemons.kill9("mlflow-sink")
                        killed = True
                        chaos_note = (f"chaos: MLflow sink killed with SIGKILL at learner "
                                      f"{state.learner_id}'s iteration 2, restarted 1 s later")
                        progress.note(chaos_note)
                        await asyncio.sleep(1.0)  # events keep flowing into the store meanwhile
                        daemons.restart("mlflow-sink")
                    daemons.check_alive()
                tracker.close()  # flushes what it still holds
                stored = wait_for(lambda: stored_events(bus_json, learner.run_id, last.stop_seq),
                                  "all events in the broker's store", daemons, timeout=30)
                for name, state_dir in states.items():
                    progress.note(f"waiting for the {name} sink to apply all {stored} events…")
                    wait_for(lambda s=state_dir: (run_status(s, learner.run_id) or {}).get("next_seq", 0)
                             >= stored, f"the {name} sink to catch up", daemons)
                progress.refresh()
        run = learner.run_id

    return collect(out, run, runs_dir, stored, mlflow_uri, chaos_note)


def collect(out: Path, run: str, runs_dir: Path, stored: int, mlflow_uri: str,
            chaos: str | None) -> DemoResult:
    """Read back what each sink holds and compare it with the broker's store."""
    from rose import history
    from rose.plot import plot

    jsonl = runs_dir / f"{run}.jsonl"
    events = list(read_events(jsonl))
    (h,) = history.histories(events).values()
    result = DemoResult(run=run, reason=h.reason or "running", out=out, jsonl=jsonl,
                        plot=out / "metrics.png", mlflow_uri=mlflow_uri, chaos=chaos)
    result.iterations = {lid: len(s.iterations) for lid, s in sorted(h.learners.items())}
    result.final_mse = h.final_metrics()
    result.file_events = len(events)
    result.file_unique = len({e["seq"] for e in events})
    result.stored_events = stored
    result.mlflow_steps = mlflow_steps(mlflow_uri, run, list(result.iterations))
    plot({run: h}, result.plot, keys=["n_labeled", "max_std"])
    return result


class LastSeq(TrackerBase):
    """Remembers the seq of the run's stop event (its last one)."""

    stop_seq: int | None = None

    def on_stop(self, final_state: Any, reason: str) -> None:
        self.stop_seq = event_context().seq


def stored_events(bus_json: Path, run: str, stop_seq: int) -> int | None:
    """How many events of ``run`` the broker stored, once all of them are in."""
    from bus.client import BusClient

    with BusClient.from_file(bus_json) as client:
        for r in client.runs():
            if r["run"] == run and r["last_seq"] == stop_seq and r["count"] == stop_seq + 1:
                return r["count"]
    return None


def mlflow_steps(uri: str, run: str, learner_ids: list) -> dict[Any, int]:
    """Criterion-metric steps per learner in the MLflow run tagged with this rose run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    (mrun,) = client.search_runs([exp.experiment_id], f"tags.`rose.run_id` = '{run}'")
    return {
        lid: len(client.get_metric_history(mrun.info.run_id, f"{lid}/{MEAN_SQUARED_ERROR_MSE}"))
        for lid in learner_ids
    }


def summary(r: DemoResult) -> str:
    # Paths as seen from where the user ran scripts/demo (it passes that directory), and the
    # commands through the environment's own bin/, so they work as printed in a plain shell.
    caller = os.environ.get("ROSE_DEMO_CWD") or os.getcwd()

    def rel(path: Path) -> str:
        text = os.path.relpath(path, caller)
        return shlex.quote(text if os.sep in text else os.path.join(".", text))

    bin_dir = Path(sys.executable).parent
    lines = ["", f"run {r.run}: {r.reason}"]
    for lid, n in r.iterations.items():
        mse = r.final_mse.get(lid)
        lines.append(f"  learner {lid}: {n:2d} iterations, final test MSE {mse:.5f}")
    total = sum(r.iterations.values())
    lines += [
        "",
        f"events: {r.stored_events} in the broker's store, {r.file_events} in the file sink's log "
        f"({r.file_unique} distinct), {total} iteration steps logged in MLflow "
        f"({', '.join(f'learner {k}: {v}' for k, v in r.mlflow_steps.items())})",
    ]
    if r.chaos:
        lines.append(r.chaos)
    lines.append("nothing lost, nothing duplicated" if r.nothing_lost
                 else "MISMATCH: a sink does not hold exactly the run's events (see logs/)")
    lines += [
        "",
        f"event log (JSON lines): {rel(r.jsonl)}",
        f"metric curves:          {rel(r.plot)}",
        f"daemon logs:            {rel(r.out / 'logs')}",
        f"browse in MLflow:       {rel(bin_dir / 'mlflow')} ui --backend-store-uri "
        f"{shlex.quote(r.mlflow_uri)}",
        f"replay into a new sink: {rel(bin_dir / 'rose')} replay {rel(r.jsonl)} --into file "
        f"--out {rel(r.out / 'replayed')}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--learners", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--pace", type=float, default=0.3, help="seconds each simulation takes")
    parser.add_argument("--chaos", action="store_true", help="kill -9 and restart the MLflow sink mid-run")
    parser.add_argument("--plain", action="store_true", help="line output instead of the live table")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    live = sys.stdout.isatty() and not args.plain
    try:
        result = asyncio.run(run_demo(args.out, args.learners, args.max_iter, args.pace, args.chaos, live))
    except KeyboardInterrupt:
        print("\ninterrupted: every process the demo started has been stopped", file=sys.stderr)
        return 130
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(summary(result))
    return 0 if result.nothing_lost else 1


if __name__ == "__main__":
    sys.exit(main())
