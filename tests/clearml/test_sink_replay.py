"""The ClearML sink driven by the sink runtime from event logs: replay == in-process,
restarts continue the same task without repeating a point, worker crashes are retries."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from rose.al import ParallelActiveLearner, SequentialActiveLearner
from rose.eventlog import read_events
from rose.integrations.clearml_tracker import ClearMLTracker
from rose.integrations.file_tracker import FileTracker
from sinks.clearml_sink import ClearMLSink, read_journal
from sinks.runtime import RuntimeConfig, SinkRuntime
from sinks.sources import ListSource, LogSource
from tests.clearml.conftest import by_run, normalized, sessions
from tests.clearml.pipelines import register

FAST = RuntimeConfig(retry_initial_ms=10, retry_max_ms=50, max_attempts=20)


def sink_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CLEARML_CACHE_DIR=str(cache), CLEARML_OFFLINE_MODE="1")
    return env


def make_sink(tmp_path: Path, cache: Path, **kw) -> ClearMLSink:
    kw.setdefault("task_name", "contract-01")
    return ClearMLSink("ROSE-test", tmp_path / "journal", env=sink_env(cache), **kw)


async def run_tracked(engine, tmp_path, cls=SequentialActiveLearner, **start):
    learner = register(cls(engine), mse=(0.5, 0.2, 0.05, 0.009))
    log_dir = tmp_path / "logs"
    log_dir.mkdir(exist_ok=True)
    file_tracker = FileTracker(log_dir)
    learner.add_tracker(file_tracker)
    learner.add_tracker(ClearMLTracker("ROSE-test", "contract-01", learner_names=["A", "B"]))
    async for _ in learner.start(**start):
        pass
    return file_tracker.path


async def test_replay_into_the_sink_equals_the_in_process_tracker(engine, tmp_path, clearml_cache):
    log_path = await run_tracked(engine, tmp_path, max_iter=6)
    (inproc,) = sessions(clearml_cache)

    cache = tmp_path / "sink-cache"
    counters = SinkRuntime(make_sink(tmp_path, cache), LogSource([log_path]), config=FAST).run()
    (replayed,) = sessions(cache)
    assert normalized(replayed) == normalized(inproc)
    assert counters.failed == 0 and counters.gaps == 0

    # Replaying again (a new runtime without a checkpoint) neither adds a task nor a point.
    SinkRuntime(make_sink(tmp_path, cache), LogSource([log_path]), config=FAST).run()
    (again,) = sessions(cache)
    assert normalized(again) == normalized(inproc)


async def test_parallel_run_replays_with_learner_names(engine, tmp_path, clearml_cache):
    log_path = await run_tracked(
        engine, tmp_path, cls=ParallelActiveLearner, parallel_learners=2, max_iter=3
    )
    (inproc,) = sessions(clearml_cache)
    cache = tmp_path / "sink-cache"
    sink = make_sink(tmp_path, cache, learner_names=["A", "B"])
    SinkRuntime(sink, LogSource([log_path]), config=FAST).run()
    (replayed,) = sessions(cache)
    assert normalized(replayed) == normalized(inproc)
    assert {s for (_, s, _, _) in normalized(replayed)["scalars"]} == {"A", "B"}


async def test_a_stopped_sink_continues_the_same_task(engine, tmp_path, clearml_cache):
    log_path = await run_tracked(engine, tmp_path, max_iter=6)
    (inproc,) = sessions(clearml_cache)
    events = list(read_events(log_path))
    cache = tmp_path / "sink-cache"

    # First sink process sees half the run, then goes away (run still open).
    SinkRuntime(make_sink(tmp_path, cache), ListSource(events[:3]), config=FAST).run()
    (run,) = {e["run"] for e in events}
    journal = read_journal(tmp_path / "journal" / f"{run}.json")
    assert journal["next_seq"] == 3 and not journal["closed"]

    # The next one gets everything again (no checkpoint): the task continues, once.
    SinkRuntime(make_sink(tmp_path, cache), ListSource(events), config=FAST).run()
    (session,) = by_run(cache).values()
    assert normalized(session) == normalized(inproc)


@pytest.mark.parametrize("restart_batch", [None, 1], ids=["whole", "smaller-batches"])
async def test_a_batch_left_in_flight_is_not_repeated(engine, tmp_path, clearml_cache, restart_batch):
    """A worker killed after ClearML wrote a batch but before the journal moved on.

    The restarted sink may take that range in smaller batches (fewer events had
    arrived): every one of them is still checked against what the task holds.
    """
    log_path = await run_tracked(engine, tmp_path, max_iter=6)
    (inproc,) = sessions(clearml_cache)
    events = list(read_events(log_path))
    run = events[0]["run"]
    cache = tmp_path / "sink-cache"
    SinkRuntime(make_sink(tmp_path, cache), ListSource(events[:4]), config=FAST).run()
    path = tmp_path / "journal" / f"{run}.json"
    journal = json.loads(path.read_text())
    assert journal["next_seq"] == 4
    journal.update(next_seq=2, inflight=[2, 3])  # as if seqs 2..3 were written, not journaled
    path.write_text(json.dumps(journal))

    config = FAST if restart_batch is None else replace(FAST, max_batch=restart_batch)
    SinkRuntime(make_sink(tmp_path, cache), ListSource(events), config=config).run()
    (session,) = sessions(cache)
    assert normalized(session) == normalized(inproc)


async def test_a_run_resumed_from_the_previous_layout_repeats_no_point(
    engine, tmp_path, clearml_cache
):
    """The previous layout named a sequential run's series after the title, not ``value``."""
    log_path = await run_tracked(engine, tmp_path, max_iter=6)
    events = list(read_events(log_path))
    run = events[0]["run"]
    cache = tmp_path / "sink-cache"
    SinkRuntime(make_sink(tmp_path, cache), ListSource(events[:4]), config=FAST).run()
    (session,) = sessions(cache)
    metrics = session["folder"] / "metrics.jsonl"
    old = []
    for line in metrics.read_text().splitlines():
        batch = json.loads(line)
        for e in batch:
            if e.get("type") == "training_stats_scalar":
                e["variant"] = e["metric"]  # as the previous layout wrote it
        old.append(json.dumps(batch))
    metrics.write_text("\n".join(old) + "\n")
    path = tmp_path / "journal" / f"{run}.json"
    journal = json.loads(path.read_text())
    journal.update(next_seq=2, inflight=[2, 3])  # crashed before journaling seqs 2..3
    path.write_text(json.dumps(journal))

    SinkRuntime(make_sink(tmp_path, cache), ListSource(events), config=FAST).run()
    (session,) = sessions(cache)
    points = [(t, it) for (t, _, it, _) in normalized(session)["scalars"]]
    assert len(points) == len(set(points)), "a point written under both series names"
    iterations = {it for (t, it) in points if t == "train_loss"}
    assert iterations == {b["body"]["iteration"] for b in events if b["kind"] == "iteration"}
