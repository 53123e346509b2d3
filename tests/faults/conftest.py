"""Fault-injection harness: the broker, a file sink and an MLflow sink as real processes.

A :class:`Stack` starts ``rose bus`` on fixed loopback ports (so a restarted
broker is found again), ``rose sink file`` and ``rose sink mlflow``, and
learner processes (:mod:`tests.faults._learner`) that publish through a
BusTracker while an in-process FileTracker writes the reference logs.  Every
process is bounded: waits have deadlines and every exit path kills what is
left.  :meth:`Stack.check_exactly_once` compares what the sinks hold with the
reference and returns the numbers the summary at the end of the run prints.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import free_port
from tests.polling import wait_until as _poll
from tests.processes import ChildProcess

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 90.0
#: Environment the daemons must not inherit from whoever runs the tests.
SCRUBBED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "ROSE_BUS",
    "ROSE_SERVER_KEY",
    "ROSE_CLIENT_KEY",
)

#: Lines for the terminal summary: one per scenario, with the events checked.
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("fault scenarios: events found exactly once")
        for line in REPORT:
            terminalreporter.write_line(line)


#: The tests' poll with the bound that real daemons under fault need.
wait_until = functools.partial(_poll, timeout=BOUND_S, every=0.05)


def limit_file_size(limit: int) -> Callable[[], None]:
    """A preexec_fn: files this process writes may not grow beyond ``limit`` bytes.

    Writes past it fail with EFBIG (SIGXFSZ ignored) like writes to a full
    disk fail with ENOSPC; ``raise_file_size_limit`` is the space coming back.
    Works unprivileged, so any CI can run it.
    """

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return preexec


def raise_file_size_limit(pid: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


class Daemon(ChildProcess):
    """One ``rose ...`` daemon; every (re)start is a new process with its own log file."""

    TERMINATE_WAIT_S = 60.0
    KILL_WAIT_S = 20.0

    def __init__(
        self,
        name: str,
        argv: list[str],
        root: Path,
        *,
        env: dict[str, str] | None = None,
        ready: Callable[[Daemon], bool] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.root = root
        self.env = env or {}
        self.ready = ready
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.logs: list[Path] = []
        self.preexec: Callable[[], None] | None = None
        self.events: list[str] = []  # what was done to it, for the report

    def start(self, wait: bool = True) -> Daemon:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} still running"
        self.starts += 1
        log_path = self.root / f"{self.name}-{self.starts}.log"
        self.logs.append(log_path)
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        env.update(PYTHONPATH=str(REPO), **self.env)
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *self.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                preexec_fn=self.preexec,
            )
        if wait and self.ready is not None:
            wait_until(lambda: self._ready_or_dead(), f"{self.name} to start", timeout=60)
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"
        return self

    def _ready_or_dead(self) -> bool:
        assert self.proc is not None and self.ready is not None
        return self.proc.poll() is not None or self.ready(self)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None and self.alive, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(20)
        self.events.append("kill -9 + restart")

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.events.append("SIGSTOP")  # SIGCONT follows

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.events[-1] = "SIGSTOP/SIGCONT"

    def wait_ready(self) -> None:
        if self.ready is not None:
            wait_until(self._ready_or_dead, f"{self.name} to be ready", timeout=60)
        assert self.alive, f"{self.name} exited:\n{self.log()[-3000:]}"

    def restart(self, wait: bool = True) -> None:
        """A clean stop (SIGTERM once it is up: exit status 0), then a new process."""
        self.wait_ready()
        rc = self.terminate()
        assert rc == 0, f"{self.name} exited {rc} on SIGTERM:\n{self.log()[-3000:]}"
        self.events.append("SIGTERM (exit 0) + restart")
        self.start(wait=wait)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


def _broker_ready(d: Daemon) -> bool:
    bus_file = d.root / "store" / "bus.json"
    try:
        return json.loads(bus_file.read_text()).get("pid") == d.pid
    except (OSError, ValueError):
        return False


def _sink_ready(state: Path) -> Callable[[Daemon], bool]:
    def ready(d: Daemon) -> bool:
        try:
            status = json.loads((state / "status.json").read_text())
        except (OSError, ValueError):
            return False
        return status.get("pid") == d.pid and status.get("phase") == "running"

    return ready


class Learner:
    """A learner process (tests.faults._learner); ``result()`` waits for its report."""

    def __init__(self, stack: Stack, name: str, iterations: int, pace_ms: int, env: dict) -> None:
        self.name = name
        self.iterations = iterations
        self.log_path = stack.root / f"learner-{name}.log"
        self.out_path = stack.root / f"learner-{name}.out"
        penv = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        penv.update(PYTHONPATH=str(REPO), **env)
        with self.log_path.open("wb") as log, self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "tests.faults._learner", str(stack.bus_file),
                    str(stack.ref), name, str(iterations), str(pace_ms),
                ],
                stdout=out,
                stderr=log,
                env=penv,
                cwd=stack.root,
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self, timeout: float = BOUND_S) -> dict[str, Any]:
        rc = self.proc.wait(timeout)
        assert rc == 0, f"learner {self.name} exited {rc}:\n{self.log_path.read_text()}"
        return json.loads(self.out_path.read_text().strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)


class Stack:
    """Broker + file sink + MLflow sink (+ learners) under one temporary directory."""

    def __init__(self, root: Path, *, mlflow: bool = True) -> None:
        self.root = root
        self.ref = root / "reference"
        self.out = root / "out"
        self.ref.mkdir()
        ports = [free_port() for _ in range(3)]
        eps = [f"tcp://127.0.0.1:{p}" for p in ports]
        self.store = root / "store"
        self.bus_file = self.store / "bus.json"
        self.broker = Daemon(
            "broker",
            ["bus", "--store", str(self.store), "--frontend", eps[0], "--backend", eps[1],
             "--replay", eps[2], "--fsync-interval", "0.05"],
            root,
            ready=_broker_ready,
        )  # fmt: skip
        common = ["--bus", str(self.bus_file), "--retry-max", "0.5", "--timeout-ms", "2000"]
        self.file_state = root / "file-state"
        self.file_sink = Daemon(
            "file-sink",
            [
                "-v",
                "sink",
                "file",
                "--out",
                str(self.out),
                "--state",
                str(self.file_state),
                *common,
            ],
            root,
            ready=_sink_ready(self.file_state),
        )
        self.mlflow_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.mlflow_state = root / "mlflow-state"
        self.mlflow_sink: Daemon | None = None
        if mlflow:
            self.mlflow_sink = Daemon(
                "mlflow-sink",
                ["-v", "sink", "mlflow", "--tracking-uri", self.mlflow_uri, "--experiment",
                 "faults", "--state", str(self.mlflow_state), *common],
                root,
                ready=_sink_ready(self.mlflow_state),
            )  # fmt: skip
        self.learners: list[Learner] = []

    @property
    def daemons(self) -> list[Daemon]:
        return [d for d in (self.broker, self.file_sink, self.mlflow_sink) if d is not None]

    def start(self) -> Stack:
        if self.mlflow_sink is not None:
            _init_mlflow(self.mlflow_uri)
        self.broker.start()
        for d in self.daemons[1:]:
            d.start(wait=False)
        for d in self.daemons[1:]:
            wait_until(lambda d=d: d._ready_or_dead(), f"{d.name} to start", timeout=60)
            assert d.alive, d.log()
        return self

    def learner(self, name: str, iterations: int, pace_ms: int = 0, **env: str) -> Learner:
        lr = Learner(self, name, iterations, pace_ms, env)
        self.learners.append(lr)
        return lr

    def close(self) -> None:
        for lr in self.learners:
            lr.kill()
        for d in self.daemons:
            d.kill()

    # ------------------------------------------------------------ checks

    def reference(self) -> dict[str, bytes]:
        return {p.stem: p.read_bytes() for p in sorted(self.ref.glob("*.jsonl"))}

    def file_sink_complete(self) -> bool:
        ref = self.reference()
        return all((self.out / f"{run}.jsonl").is_file() for run in ref) and all(
            (self.out / f"{run}.jsonl").read_bytes() == data for run, data in ref.items()
        )

    def mlflow_complete(self) -> bool:
        want = {run: data.count(b"\n") for run, data in self.reference().items()}
        return _mlflow_positions(self.mlflow_uri) == want

    def wait_delivered(self) -> None:
        """Every learner done, then every sink holding every reference event."""
        for lr in self.learners:
            lr.result()
        wait_until(self.file_sink_complete, "the file sink to hold every event")
        if self.mlflow_sink is not None:
            wait_until(self.mlflow_complete, "the MLflow sink to hold every event")

    def stop_all(self) -> None:
        """SIGTERM every daemon, sinks first; each must exit 0."""
        for d in reversed(self.daemons):
            if d.alive and d.ready is not None:  # one restarted last may still be starting
                wait_until(d._ready_or_dead, f"{d.name} to be up before SIGTERM", timeout=60)
            rc = d.terminate()
            assert rc == 0, f"{d.name} exited {rc} on SIGTERM:\n{d.log()[-3000:]}"

    def check_exactly_once(self, scenario: str) -> dict[str, Any]:
        """Compare the sinks with the reference logs; record and return the numbers."""
        from rose.eventlog import read_events

        ref = self.reference()
        assert len(ref) == len(self.learners), "one reference log per learner"
        counts: dict[str, int] = {}
        for run, data in ref.items():
            seqs = [e["seq"] for e in read_events(self.ref / f"{run}.jsonl", strict=True)]
            assert seqs == list(range(len(seqs)))
            # The file sink: the same bytes as the in-process FileTracker wrote.
            got = (self.out / f"{run}.jsonl").read_bytes()
            assert got == data, f"file sink differs from the reference for {run}"
            counts[run] = len(seqs)
        assert sorted(p.stem for p in self.out.glob("*.jsonl")) == sorted(ref)
        mlflow_metrics = 0
        if self.mlflow_sink is not None:
            mlflow_metrics = _check_mlflow(self.mlflow_uri, self.ref, self.root / "replay.db")
        for d in self.daemons:
            assert "Traceback" not in d.log(), f"{d.name} logged a traceback:\n{d.log()[-3000:]}"
        events = sum(counts.values())
        sinks = "file + mlflow" if self.mlflow_sink is not None else "file"
        faults = "; ".join(f"{d.name}: {', '.join(d.events) or 'none'}" for d in self.daemons)
        line = (
            f"{scenario}: {len(counts)} run(s), {events} events, each exactly once in {sinks}"
            + (f" ({mlflow_metrics} MLflow metric points)" if mlflow_metrics else "")
            + f" | {faults}"
        )
        REPORT.append(line)
        return {"runs": counts, "events": events, "mlflow_metric_points": mlflow_metrics}


def _init_mlflow(uri: str) -> None:
    """Create the schema up front so polling never races the sink's migration."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments()


def _mlflow_positions(uri: str) -> dict[str, int]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("faults")
    if exp is None:
        return {}
    out = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        tag = run.data.tags.get("rose.next_seq", "0")
        out[run.data.tags.get("rose.run_id")] = int(tag.split(":")[0])
    return out


def _check_mlflow(uri: str, ref_dir: Path, replay_db: Path) -> int:
    """The bus's MLflow runs == a replay of the reference logs; no metric step twice."""
    from cli.main import main as rose_main
    from tests.mlflow.helpers import mlflow_content

    got = mlflow_content(uri, "faults")
    replay_uri = f"sqlite:///{replay_db}"
    logs = sorted(map(str, ref_dir.glob("*.jsonl")))
    argv = ["replay", *logs, "--into", "mlflow", "--tracking-uri", replay_uri]
    assert rose_main([*argv, "--experiment", "faults", "--no-progress"]) == 0
    want = mlflow_content(replay_uri, "faults")
    assert got == want, "the MLflow sink's runs differ from a replay of the reference logs"
    points = 0
    for run, content in got.items():
        assert content["status"] == "FINISHED", run
        for key, history in content["metrics"].items():
            steps = [h[0] for h in history]
            assert len(steps) == len(set(steps)), f"{run}: metric {key} has a step twice"
            points += len(steps)
    return points


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    pytest.importorskip("mlflow")
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def paused(d: Daemon) -> Iterator[None]:
    d.pause()
    try:
        yield
    finally:
        d.resume()
