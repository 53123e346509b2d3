"""Sinks on a real bus: broker thread, `rose sink` processes, real learners, loopback only.

The contract of docs/architecture.md for files: in-process FileTracker == file sink via the
bus == replay of the log (and of the broker store) into a new file sink, byte for byte.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from radical.asyncflow import WorkflowEngine
from rhapsody.backends import ConcurrentExecutionBackend

from bus import BusTracker
from cli.main import main as rose_main
from rose.al import AlgorithmSelector, SequentialActiveLearner
from rose.eventlog import read_events
from rose.events import to_json_line
from rose.integrations.file_tracker import FileTracker
from rose.metrics import MEAN_SQUARED_ERROR_MSE
from rose.tracking import EventContext
from sinks.state import read_status
from tests.polling import wait_until
from tests.sinks.helpers import Publisher, interleave, publish, run_events

BOUND_S = 60.0


async def run_learner(tmp_path: Path, trackers: list, *, iterations: int = 6, name: str = "al"):
    """A small real active-learning run; returns (run id, states)."""
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(max_workers=2))
    engine = await WorkflowEngine.create(backend, work_dir=str(tmp_path))
    try:
        learner = SequentialActiveLearner(engine, run_name=name)
        rng = np.random.default_rng(3)
        mse = iter([0.5 / (i + 1) for i in range(100)])

        @learner.simulation_task(as_executable=False, log_params={"n": 8})
        async def simulation(*a, **k):
            return {"x": rng.random(4), "n_labeled": np.int64(8)}

        @learner.training_task(as_executable=False, log_params={"kernel": "rbf", "lr": 1e-3})
        async def training(*a, **k):
            return {"train_loss": np.float32(0.25), "weights": np.arange(3.0)}

        @learner.active_learn_task(as_executable=False)
        async def active_learn(*a, **k):
            return {"picked": [1, 2], "note": object()}

        @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.0, as_executable=False)
        async def check(*a, **k):
            return next(mse)

        for t in trackers:
            learner.add_tracker(t)
        states = [s async for s in learner.start(max_iter=iterations)]
        return learner.run_id, states
    finally:
        await engine.shutdown()


def lines_of(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_lines(path: Path, n: int, what: str = "sink output") -> None:
    wait_until(lambda: lines_of(path) >= n, timeout=BOUND_S, what=what)


async def file_contract(tmp_path: Path, broker, sink_process, learn) -> tuple:
    """The in-process == bus == replay contract for files, around one learner run.

    ``await learn(trackers)`` runs a learner with a FileTracker and a BusTracker
    and returns its run id; the file sink on the bus, and a replay of what it
    wrote, hold the FileTracker's bytes.  Returns (run id, those bytes, the
    bus sink's log, the sink) for the checks of each learner family.
    """
    sink = sink_process(
        "file", "--bus", str(broker.bus_file), "--out", str(tmp_path / "bus-out"), name="file"
    )
    inproc = tmp_path / "inproc"
    inproc.mkdir()
    bus_tracker = BusTracker(bus=broker.bus_file)
    try:
        run = await learn([FileTracker(inproc), bus_tracker])
    finally:
        bus_tracker.close()
    assert bus_tracker.dropped == 0
    expected = (inproc / f"{run}.jsonl").read_bytes()
    via_bus = tmp_path / "bus-out" / f"{run}.jsonl"
    wait_lines(via_bus, expected.count(b"\n"))
    assert sink.terminate() == 0
    assert via_bus.read_bytes() == expected
    assert rose_main(["replay", str(via_bus), "--into", "file", "--out", str(tmp_path / "r1")]) == 0
    assert (tmp_path / "r1" / f"{run}.jsonl").read_bytes() == expected
    assert "Traceback" not in sink.output()
    return run, expected, via_bus, sink


async def test_contract_in_process_equals_bus_equals_replay(tmp_path, broker, sink_process):
    states = []

    async def learn(trackers: list) -> str:
        run, got = await run_learner(tmp_path, trackers)
        states.extend(got)
        return run

    run, expected, via_bus, sink = await file_contract(tmp_path, broker, sink_process, learn)
    assert len(states) == 6 and expected.count(b"\n") == 8

    # Replay of the broker's store (the log's replay is in the contract) into a new file sink.
    store = str(broker.bus_file.parent)  # read through the running broker
    assert rose_main(["replay", store, "--into", "file", "--out", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2" / f"{run}.jsonl").read_bytes() == expected
    # A second sink run (restart) appends nothing.
    again = sink_process(
        "file", "--bus", str(broker.bus_file), "--out", str(tmp_path / "bus-out"), name="again"
    )
    status = tmp_path / "bus-out" / ".rose-sink" / "status.json"
    wait_until(lambda: (read_status(status.parent) or {}).get("phase") == "running")
    assert again.terminate() == 0
    assert via_bus.read_bytes() == expected
    assert "Traceback" not in sink.output() + again.output()


async def run_selector(tmp_path: Path, trackers: list) -> str:
    """A small real AlgorithmSelector run: two algorithms, each its own learner_id series."""
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(max_workers=2))
    engine = await WorkflowEngine.create(backend, work_dir=str(tmp_path))
    try:
        sel = AlgorithmSelector(engine, run_name="select")
        mse = {"greedy": iter([0.4, 0.2, 0.05]), "random": iter([0.5, 0.3, 0.2, 0.1])}

        @sel.simulation_task(as_executable=False, log_params={"n": 8})
        async def simulation(*a, **k):
            return {"x": np.arange(3.0)}

        @sel.training_task(as_executable=False)
        async def training(*a, **k):
            return {"train_loss": np.float32(0.25)}

        for name in mse:

            @sel.active_learn_task(name=name, as_executable=False, log_params={"algo": name})
            async def pick(*a, _name=name, **k):
                return {"algo": _name}

        @sel.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.1, as_executable=False)
        async def check(picked, *a, **k):
            return next(mse[picked["algo"]])

        for t in trackers:
            sel.add_tracker(t)
        result = await sel.start(max_iter=4)
        assert result["best_algorithm"] == "greedy"
        return sel.run_id
    finally:
        await engine.shutdown()


async def test_contract_algorithm_selector(tmp_path, broker, sink_process):
    """The in-process == bus == replay contract holds for an AlgorithmSelector run."""
    learn = functools.partial(run_selector, tmp_path)
    run, expected, _, _ = await file_contract(tmp_path, broker, sink_process, learn)
    events = [json.loads(line) for line in expected.splitlines()]
    assert [e["kind"] for e in events] == ["start"] + ["iteration"] * 7 + ["stop"]
    assert events[0]["body"]["learner_type"] == "AlgorithmSelector"
    assert {"active_learn.greedy", "active_learn.random"} <= set(events[0]["body"]["tasks"])
    ids = [e["body"]["learner_id"] for e in events if e["kind"] == "iteration"]
    assert sorted(ids) == ["greedy"] * 3 + ["random"] * 4
    assert events[-1]["body"]["final_state"]["learner_id"] == "greedy"


def assert_exact(out: Path, runs: dict[str, list[dict]]) -> None:
    for run, events in runs.items():
        path = out / f"{run}.jsonl"
        assert [e["seq"] for e in read_events(path)] == list(range(len(events)))
        assert path.read_text() == "".join(to_json_line(e) for e in events)


def test_kill_9_mid_run_and_restart(tmp_path, broker, sink_process):
    runs = {f"k{i}": run_events(f"k{i}", 1500) for i in range(3)}
    out = tmp_path / "out"
    args = ("file", "--bus", str(broker.bus_file), "--out", str(out), "--batch", "50")
    sink = sink_process(*args, name="first")
    publisher = Publisher(broker.bus_file, runs, pace_every=25)
    wait_until(lambda: lines_of(out / "k0.jsonl") > 200, timeout=BOUND_S, what="progress")
    sink.signal(signal.SIGKILL)
    sink.proc.wait(10)
    killed_at = sum(lines_of(out / f"{r}.jsonl") for r in runs)
    sink_process(*args, name="second")
    publisher.join(BOUND_S)
    total = sum(len(e) for e in runs.values())
    wait_until(
        lambda: sum(lines_of(out / f"{r}.jsonl") for r in runs) >= total,
        timeout=BOUND_S,
        what="all events after restart",
    )
    time.sleep(0.3)  # nothing more may arrive
    assert 0 < killed_at < total
    assert_exact(out, runs)


def test_sink_started_after_the_run_catches_up(tmp_path, broker, sink_process):
    runs = {"late1": run_events("late1", 300), "late2": run_events("late2", 40)}
    publish(broker.bus_file, interleave(*runs.values())).close()
    out = tmp_path / "out"
    sink = sink_process("file", "--bus", str(broker.bus_file), "--out", str(out), name="late")
    wait_until(lambda: lines_of(out / "late1.jsonl") == 302, timeout=BOUND_S)
    wait_until(lambda: lines_of(out / "late2.jsonl") == 42, timeout=BOUND_S)
    assert sink.terminate() == 0
    assert_exact(out, runs)
    ckpt = json.loads((out / ".rose-sink" / "checkpoint.json").read_text())
    assert ckpt["store_id"] == broker.store_id and ckpt["offset"] == 344


FLAKY_TRACKERS = '''
import json, os
from rose import TrackerBase
from rose.tracking import event_context

class Flaky(TrackerBase):
    """Raises on iteration 2 twice (then works); on iteration 3 of 'bad' runs always."""

    def __init__(self, out):
        self.out = out
        self.failures = 0

    def _write(self, what):
        ctx = event_context()
        with open(os.path.join(self.out, ctx.run + ".calls"), "a") as f:
            f.write(json.dumps([ctx.seq, what]) + "\\n")

    def on_start(self, manifest):
        self._write("start")

    def on_iteration(self, state):
        run = event_context().run
        if state.iteration == 2 and self.failures < 2:
            self.failures += 1
            raise RuntimeError("flaky backend")
        if state.iteration == 3 and run.startswith("bad"):
            raise ValueError("this event never works")
        self._write(state.iteration)

    def on_stop(self, final_state, reason):
        self._write(reason)
'''


def test_tracker_sink_retries_and_isolates_failures(tmp_path, broker, sink_process):
    (tmp_path / "flaky_trackers.py").write_text(FLAKY_TRACKERS)
    out = tmp_path / "calls"
    out.mkdir()
    sink = sink_process(
        "tracker",
        "flaky_trackers:Flaky",
        "--arg",
        f"out={out}",
        "--bus",
        str(broker.bus_file),
        "--max-attempts",
        "3",
        "--retry-max",
        "0.05",
        "--state",
        str(tmp_path / "state"),
        name="tracker",
        env={"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2]}"},
    )
    runs = {"good": run_events("good", 5), "bad": run_events("bad", 5)}
    publish(broker.bus_file, interleave(*runs.values())).close()

    def calls(run: str) -> list:
        p = out / f"{run}.calls"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    wait_until(lambda: len(calls("good")) == 7 and len(calls("bad")) == 6, timeout=BOUND_S)
    assert sink.terminate() == 0
    assert calls("good") == [
        [0, "start"],
        [1, 0],
        [2, 1],
        [3, 2],
        [4, 3],
        [5, 4],
        [6, "max_iter_reached"],
    ]
    # bad: iteration 2 retried until it worked, iteration 3 skipped after 3 attempts
    assert calls("bad") == [[0, "start"], [1, 0], [2, 1], [3, 2], [5, 4], [6, "max_iter_reached"]]
    log = sink.output()
    assert "flaky backend" in log and "this event never works" in log
    assert "skipping seq 4" in log
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["counters"]["failed"] == 1 and status["counters"]["retries"] >= 5
    assert status["phase"] == "stopped"


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
async def test_stalled_sink_does_not_touch_the_learner(tmp_path, broker, sink_process):
    out = tmp_path / "out"
    sink = sink_process("file", "--bus", str(broker.bus_file), "--out", str(out), name="stalled")
    status = out / ".rose-sink" / "status.json"
    wait_until(lambda: status.exists(), timeout=BOUND_S, what="sink up")
    reference_dir = tmp_path / "ref"
    reference_dir.mkdir()
    _, reference = await run_learner(tmp_path / "a", [FileTracker(reference_dir)], iterations=8)

    sink.signal(signal.SIGSTOP)
    wait_until(lambda: _proc_state(sink.pid) == "T", what="sink stopped")
    tracker = BusTracker(bus=broker.bus_file)
    run, states = await run_learner(tmp_path / "b", [tracker], iterations=8)
    tracker.close()
    assert _proc_state(sink.pid) == "T"  # the whole run happened while the sink was frozen
    assert tracker.dropped == 0
    assert [(s.iteration, s.metric_value, s.should_stop) for s in states] == [
        (s.iteration, s.metric_value, s.should_stop) for s in reference
    ]
    sink.signal(signal.SIGCONT)
    wait_lines(out / f"{run}.jsonl", 10, "catch-up after SIGCONT")
    assert sink.terminate() == 0
    assert [e["kind"] for e in read_events(out / f"{run}.jsonl")] == (
        ["start"] + ["iteration"] * 8 + ["stop"]
    )


def test_status_and_tail(tmp_path, broker, sink_process, capsys):
    out = tmp_path / "out"
    sink = sink_process("file", "--bus", str(broker.bus_file), "--out", str(out), name="st")
    events = run_events("tailed", 3)
    publish(broker.bus_file, events).close()
    wait_lines(out / "tailed.jsonl", 5)
    state = out / ".rose-sink"
    wait_until(
        lambda: ((read_status(state) or {}).get("counters") or {}).get("applied") == 5,
        timeout=BOUND_S,
    )
    assert rose_main(["status", "--bus", str(broker.bus_file), "--state", str(state)]) == 0
    text = capsys.readouterr().out
    assert "broker pid" in text and "5 event(s) of 1 run(s)" in text
    assert "sink file [running]" in text and "applied 5" in text and "tailed" in text
    assert (
        rose_main(["status", "--bus", str(broker.bus_file), "--state", str(state), "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["broker"]["events"] == 5 and report["sinks"][0]["counters"]["gaps"] == 0

    assert rose_main(["tail", "--bus", str(broker.bus_file), "--last", "5", "--count", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "tailed #0 start SequentialActiveLearner" in lines[0]
    assert "iteration 1 mean_squared_error_mse=0.5" in lines[2] and "ev/s" in lines[2]
    assert "stop max_iter_reached" in lines[4] and "lag" in lines[4]
    assert sink.terminate() == 0
    assert rose_main(["status", "--state", str(state)]) == 0
    assert "[stopped]" in capsys.readouterr().out


def test_replay_publish_into_a_broker_is_idempotent(tmp_path, broker):
    events = run_events("pub", 20)
    log = tmp_path / "spool.jsonl"
    log.write_text("".join(to_json_line(e) for e in events))
    assert rose_main(["replay", str(log), "--publish", str(broker.bus_file)]) == 0
    assert rose_main(["replay", str(log), "--publish", broker.frontend]) == 0
    from bus import BusClient

    with BusClient(broker.backend, broker.replay) as c:
        wait_until(lambda: c.stats()["events"] == 22)
        time.sleep(0.2)
        stats = c.stats()
    assert stats["events"] == 22 and stats["duplicates"] >= 22


def test_unknown_context_is_not_needed_for_publish():
    # EventContext is stamped by the learner; replayed events carry their own.
    assert EventContext("r", 0, 1.0).seq == 0
