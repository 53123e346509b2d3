"""Learners on a real Dask LocalCluster: function tasks run in worker processes."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("dask.distributed")

from rose.al import ParallelActiveLearner  # noqa: E402
from rose.execution import engine  # noqa: E402
from tests.conftest import Recorder  # noqa: E402


def _sync_training(*args, **kwargs):
    # a plain function: the learner wraps it without breaking Dask's pickling
    return {"train_pid": os.getpid(), "n_deps": len(args)}


async def test_parallel_learner_on_local_cluster_tracked_through_the_bus(tmp_path, monkeypatch):
    from bus.broker import BrokerThread
    from bus.client import BusClient

    monkeypatch.setenv("ROSE_SESSION_DIR", str(tmp_path / "sessions"))
    monkeypatch.chdir(tmp_path)
    with BrokerThread(tmp_path / "store") as broker, BusClient(broker.backend, broker.replay) as client:
        trackers = await _run_two_jobs(broker.frontend)
        for tracker in trackers:
            tracker.close()
        stored = {r["run"]: r["count"] for r in client.runs()}
    # every event of both runs reached the broker's store: start, 6 iterations, stop
    assert sorted(stored.values()) == [8, 8] and len(stored) == 2
    assert not list(tmp_path.glob("asyncflow.session.*"))  # nothing in the working directory
    assert list((tmp_path / "sessions").glob("asyncflow.session.*"))


async def _run_two_jobs(frontend: str) -> list:
    from bus import BusTracker

    trackers = []
    async with engine("dask", workers=2) as eng:
        learners = [ParallelActiveLearner(eng), ParallelActiveLearner(eng)]
        recorders = []
        for n, learner in enumerate(learners):

            @learner.simulation_task(as_executable=False)
            async def simulation(*args, n=n, **kwargs):
                return {"sim_pid": os.getpid(), "learner_job": n}

            learner.training_task(as_executable=False)(_sync_training)

            @learner.active_learn_task(as_executable=False)
            async def active_learn(*args, **kwargs):
                return {"picked": 1}

            rec = Recorder()
            learner.add_tracker(rec)
            recorders.append(rec)
            trackers.append(BusTracker(frontend))
            learner.add_tracker(trackers[-1])

        # two learner "jobs" on one scheduler at once: results must not cross over
        import asyncio

        async def run(learner):
            return [s async for s in learner.start(parallel_learners=2, max_iter=3)]

        results = await asyncio.gather(*(run(lr) for lr in learners))

    for n, states in enumerate(results):
        assert len(states) == 6
        assert {s.learner_job for s in states} == {n}
        pids = {s.sim_pid for s in states} | {s.train_pid for s in states}
        assert os.getpid() not in pids  # tasks ran in worker processes
        assert all(s.n_deps == 1 for s in states)
        assert recorders[n].stop_reason == "max_iter_reached"
    return trackers


JOB = """
import asyncio, sys
from rose.al import SequentialActiveLearner
from rose.execution import engine

async def main(address, job):
    async with engine("dask", address=address) as eng:
        learner = SequentialActiveLearner(eng)

        @learner.simulation_task(as_executable=False)
        async def simulation(*args, **kwargs):
            return {"job": job}

        @learner.training_task(as_executable=False)
        async def training(*args, **kwargs):
            await asyncio.sleep(0.05)
            return {"trained_for": args[0]["job"]}

        @learner.active_learn_task(as_executable=False)
        async def active_learn(*args, **kwargs):
            return {}

        async for s in learner.start(max_iter=4):
            assert s.job == job and s.trained_for == job, (job, s.state)
    print("ok", job)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_two_learner_jobs_share_one_scheduler(tmp_path):
    import asyncio
    import sys

    from dask.distributed import LocalCluster

    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "ROSE_SESSION_DIR": str(tmp_path / "sessions")}
    async with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, asynchronous=True,
        host="127.0.0.1", dashboard_address=None,
    ) as cluster:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, str(script), cluster.scheduler_address, job, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            for job in ("alpha", "beta")
        ]
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
    for job, proc, (out, _) in zip(("alpha", "beta"), procs, outs, strict=True):
        assert proc.returncode == 0, out.decode()[-2000:]
        assert f"ok {job}" in out.decode()
