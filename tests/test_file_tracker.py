"""FileTracker: a replayable event log that survives preemption."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rose.al import ParallelActiveLearner, SequentialActiveLearner
from rose.eventlog import read_events
from rose.events import EventError, plain_equal
from rose.integrations.file_tracker import FileTracker, replay
from rose.metrics import MEAN_SQUARED_ERROR_MSE
from rose.tracking import IterationState, PipelineManifest
from tests.conftest import Recorder


def build(engine, cls=SequentialActiveLearner):
    learner = cls(engine, run_name="ft")
    values = iter([0.4, 0.2, 0.1, 0.05, 0.001])

    @learner.simulation_task(as_executable=False)
    async def simulation(*args, **kwargs):
        return {"x_new": np.linspace(0, 1, 4, dtype=np.float32)}

    @learner.training_task(as_executable=False, log_params={"kernel": "rbf", "alpha": 1e-3})
    async def training(*args, **kwargs):
        return {"train_mse": np.float64(0.25), "epochs": np.int64(3), "model": object()}

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*args, **kwargs):
        return {"picked": [1, 2], "nan_metric": float("nan")}

    @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.01, as_executable=False)
    async def check(*args, **kwargs):
        return next(values, 0.001)

    return learner


@pytest.mark.parametrize("cls", [SequentialActiveLearner, ParallelActiveLearner])
async def test_replay_equals_live_calls(engine, tmp_path, cls):
    learner = build(engine, cls)
    live = Recorder()
    tracker = FileTracker(tmp_path)  # a directory: the log is <dir>/<run>.jsonl
    learner.add_tracker(tracker)
    learner.add_tracker(live)
    async for _ in learner.start(max_iter=4):
        pass
    assert tracker.path == tmp_path / f"{learner.run_id}.jsonl"

    replayed = Recorder()
    n = replay(tracker.path, replayed)
    assert n == len(live.calls) == len(replayed.calls)
    for a, b in zip(live.calls, replayed.calls, strict=True):
        assert a[0] == b[0] and a[1] == b[1]  # kind, and (run, seq, ts) from the learner
        assert plain_equal(a[2], b[2]), (a, b)
    it = replayed.calls[1][2]
    assert it["state"]["x_new"].dtype == np.float32  # arrays are lossless
    assert it["state"]["model"].startswith("<object object")  # marked repr, not pickle


def test_file_tracker_by_hand_stamps_its_own_identity(tmp_path):
    path = tmp_path / "manual.jsonl"
    t = FileTracker(path)
    t.on_start(PipelineManifest(learner_type="Mine"))
    t.on_iteration(IterationState(iteration=0, metric_value=1.0))
    t.on_stop(None, "stopped")
    events = list(read_events(path))
    assert [e["seq"] for e in events] == [0, 1, 2]
    assert len({e["run"] for e in events}) == 1
    assert events[0]["origin"]["pid"] == os.getpid()


def test_read_events_skips_torn_tail_and_reports_bad_lines(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    t = FileTracker(path)
    t.on_start(PipelineManifest(learner_type="Mine"))
    t.on_iteration(IterationState(iteration=0))
    good = path.read_text()
    path.write_text(good + '{"v":1,"run":"r","se')  # the writer was killed mid-line
    with caplog.at_level(logging.WARNING):
        assert len(list(read_events(path))) == 2
    assert "torn last line" in caplog.text

    path.write_text(good.replace("\n", "\nnot json\n", 1))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(list(read_events(path))) == 2
    assert "skipped 1 bad line" in caplog.text
    with pytest.raises(EventError, match=r"log.jsonl:2"):
        list(read_events(path, strict=True))


PREEMPTED_RUN = textwrap.dedent(
    """
    import asyncio, sys, time
    from concurrent.futures import ThreadPoolExecutor
    from radical.asyncflow import WorkflowEngine
    from rhapsody.backends import ConcurrentExecutionBackend
    from rose.al import SequentialActiveLearner
    from rose.integrations.file_tracker import FileTracker

    async def main():
        engine = await WorkflowEngine.create(
            await ConcurrentExecutionBackend(ThreadPoolExecutor()), work_dir=sys.argv[2])
        learner = SequentialActiveLearner(engine)
        n = {"i": 0}

        @learner.simulation_task(as_executable=False)
        async def sim(*a, **k): return {}

        @learner.training_task(as_executable=False)
        async def train(*a, **k):
            n["i"] += 1
            if n["i"] > 5:
                time.sleep(600)  # the job is preempted while this runs
            return {"fit": n["i"]}

        @learner.active_learn_task(as_executable=False)
        async def al(*a, **k): return {}

        learner.add_tracker(FileTracker(sys.argv[1]))
        async for state in learner.start(max_iter=100):
            pass

    asyncio.run(main())
    """
)


def test_preempted_job_keeps_every_completed_iteration(tmp_path):
    log = tmp_path / "run.jsonl"
    script = tmp_path / "job.py"
    script.write_text(PREEMPTED_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(log), str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if log.exists() and log.read_text().count('"kind":"iteration"') >= 5:
                break
            assert proc.poll() is None, "job ended before it could be preempted"
            time.sleep(0.05)
        time.sleep(0.2)  # let it get stuck in the 6th training
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    events = list(read_events(log, strict=True))
    assert [e["kind"] for e in events] == ["start"] + ["iteration"] * 5
    assert [e["body"]["state"]["fit"] for e in events[1:]] == [1, 2, 3, 4, 5]


def test_a_path_ending_in_slash_is_a_directory_even_before_it_exists(tmp_path):
    t = FileTracker(f"{tmp_path}/runs/")
    t.on_start(PipelineManifest(learner_type="Mine"))
    t.on_stop(None, "stopped")
    (log,) = (tmp_path / "runs").iterdir()
    assert log.suffix == ".jsonl" and log == t.path
