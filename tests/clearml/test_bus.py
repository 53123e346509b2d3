"""The ClearML sink as a real `rose sink clearml` process on a real bus (offline ClearML).

The contract of docs/architecture.md on the offline sessions' task.json / metrics.jsonl:
in-process ClearMLTracker == BusTracker → broker → ClearML sink == replay of the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from bus import BusTracker
from cli.main import main as rose_main
from rose.al import ParallelActiveLearner
from rose.integrations.clearml_mapping import INHERITED_ENV, Scalar, Tags, event_ops
from rose.integrations.clearml_tracker import ClearMLTracker
from rose.integrations.file_tracker import FileTracker
from tests.clearml.conftest import by_run, normalized, sessions
from tests.clearml.pipelines import register
from tests.polling import wait_until
from tests.sinks.helpers import Publisher, interleave, publish, run_events

BOUND_S = 90.0
CLEAN_ENV = INHERITED_ENV


def sink_env(cache: Path) -> dict[str, str]:
    return {
        "CLEARML_CACHE_DIR": str(cache),
        "CLEARML_OFFLINE_MODE": "1",
        **dict.fromkeys(CLEAN_ENV, ""),
    }


def sink_args(broker, state: Path, *options: str) -> tuple[str, ...]:
    """``rose sink clearml`` on the test's bus, into project ROSE-test, with ``options``."""
    return ("clearml", "--bus", str(broker.bus_file), "--project", "ROSE-test",
            "--state", str(state), *options)  # fmt: skip


def journal(state: Path, run: str) -> dict:
    try:
        return json.loads((state / "clearml-runs" / f"{run}.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def closed(state: Path, runs) -> bool:
    return all(journal(state, r).get("closed") for r in runs)


def expected(events: list[dict], learner_names=None) -> dict:
    """Scalars and tags a run must have, straight from the mapping (no ClearML)."""
    ops = [op for e in events for op in event_ops(e, learner_names)]
    return {
        "scalars": sorted(
            (o.title, o.series, o.iteration, o.value) for o in ops if isinstance(o, Scalar)
        ),
        "tags": sorted({t for o in ops if isinstance(o, Tags) for t in o.tags}),
    }


def got(session: dict) -> dict:
    n = normalized(session)
    return {"scalars": n["scalars"], "tags": n["tags"]}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in CLEAN_ENV:
        monkeypatch.delenv(key, raising=False)


async def test_contract_in_process_equals_bus_equals_replay(
    engine,
    tmp_path,
    clearml_cache,
    broker,
    sink_process,
    monkeypatch,
):
    bus_cache, state = tmp_path / "bus-cache", tmp_path / "bus-state"
    sink = sink_process(
        *sink_args(broker, state, "--task-name", "contract-01", "--learner-names", "A,B"),
        name="clearml",
        env=sink_env(bus_cache),
    )
    learner = register(ParallelActiveLearner(engine), mse=(0.5, 0.2, 0.05))
    logs = tmp_path / "logs"
    logs.mkdir()
    bus_tracker = BusTracker(bus=broker.bus_file)
    learner.add_tracker(FileTracker(logs))
    learner.add_tracker(bus_tracker)
    learner.add_tracker(ClearMLTracker("ROSE-test", "contract-01", learner_names=["A", "B"]))
    try:
        async for _ in learner.start(parallel_learners=2, max_iter=4):
            pass
    finally:
        bus_tracker.close()
    run = learner.run_id
    (inproc,) = sessions(clearml_cache)
    wait_until(lambda: closed(state, [run]), timeout=BOUND_S, what="the sink to close the task")
    assert sink.terminate() == 0
    (via_bus,) = sessions(bus_cache)
    assert normalized(via_bus) == normalized(inproc)

    replay_cache = tmp_path / "replay-cache"
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(replay_cache))
    args = [
        "replay",
        str(logs / f"{run}.jsonl"),
        "--into",
        "clearml",
        "--project",
        "ROSE-test",
        "--task-name",
        "contract-01",
        "--learner-names",
        "A,B",
        "--state",
        str(tmp_path / "r"),
    ]
    assert rose_main(args) == 0
    (replayed,) = sessions(replay_cache)
    assert normalized(replayed) == normalized(inproc)
    assert "Traceback" not in sink.output()


def test_two_concurrent_runs_into_one_sink(tmp_path, broker, sink_process):
    runs = {r: run_events(r, 25) for r in ("alpha", "beta")}
    cache, state = tmp_path / "cache", tmp_path / "state"
    sink = sink_process(*sink_args(broker, state, "--batch", "5"), name="clearml", env=sink_env(cache))
    publish(broker.bus_file, interleave(*runs.values()), pace_every=5).close()
    wait_until(lambda: closed(state, runs), timeout=BOUND_S, what="both tasks closed")
    assert sink.terminate() == 0
    tasks = by_run(cache)
    assert sorted(tasks) == sorted(runs)
    for run, events in runs.items():
        assert tasks[run]["task"]["name"] == run
        assert got(tasks[run]) == expected(events)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.parametrize("kill_workers", [False, True], ids=["sink", "sink+workers"])
def test_kill_9_and_restart_loses_and_duplicates_nothing(
    tmp_path,
    broker,
    sink_process,
    kill_workers,
):
    runs = {f"k{i}": run_events(f"k{i}", 150) for i in range(2)}
    cache, state = tmp_path / "cache", tmp_path / "state"
    args = sink_args(broker, state, "--batch", "10")
    first = sink_process(*args, name="first", env=sink_env(cache))
    publisher = Publisher(broker.bus_file, runs, pace_every=4)
    wait_until(
        lambda: all(journal(state, r).get("next_seq", 0) > 20 for r in runs),
        timeout=BOUND_S,
        what="progress before the kill",
    )
    workers = _children(first.pid)
    first.signal(signal.SIGKILL)
    if kill_workers:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # children of the sink this test started
    first.proc.wait(10)
    sink_process(*args, name="second", env=sink_env(cache))
    publisher.join(BOUND_S)
    wait_until(lambda: closed(state, runs), timeout=BOUND_S, what="all tasks closed after restart")
    tasks = by_run(cache)
    assert sorted(tasks) == sorted(runs)
    for run, events in runs.items():
        assert got(tasks[run]) == expected(events), f"run {run} lost or repeated a point"
