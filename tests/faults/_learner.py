"""A learner process for the fault tests.

A real SequentialActiveLearner whose tasks are small Python functions, tracked
by a BusTracker (what is under test) and by an in-process FileTracker (the
reference: what the sinks must end up holding, exactly once).

Usage: python -m tests.faults._learner BUS_JSON REF_DIR NAME ITERATIONS [PACE_MS]
Prints one JSON line at the end: the run id and the BusTracker's counters.
Environment: ROSE_CLIENT_KEY when the broker uses CURVE; FAULTS_SECRET, when
set, is handed to the training task as a decor_kwarg (it must never leave).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from radical.asyncflow import WorkflowEngine
from rhapsody.backends import ConcurrentExecutionBackend

from bus import BusTracker
from rose.al.active_learner import SequentialActiveLearner
from rose.integrations.file_tracker import FileTracker


def build(engine: WorkflowEngine, name: str, secret: str | None) -> SequentialActiveLearner:
    learner = SequentialActiveLearner(engine, run_name=name)
    n = {"i": 0}
    decor = {"api_token": secret} if secret else {}

    @learner.simulation_task(as_executable=False, log_params={"pool": 500, "sampler": "lhs"})
    async def simulate(*_deps):
        n["i"] += 1
        return {"n_labeled": 4 * n["i"]}

    @learner.training_task(as_executable=False, log_params={"kernel": "rbf"}, **decor)
    async def train(*_deps):
        i = n["i"]
        return {f"k{j}": (j + 1) / (i + 1) for j in range(16)} | {
            "note": f"it{i}",
            "ok": i % 2 == 0,
        }

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*_deps):
        return {"picked": [n["i"], n["i"] + 1]}

    @learner.as_stop_criterion(metric_name="mse", threshold=-1.0, operator="<", as_executable=False)
    async def check(*_deps):
        return 1.0 / (n["i"] + 1)

    return learner


async def main() -> None:
    bus_file, ref_dir, name, iterations = sys.argv[1:5]
    pace_s = float(sys.argv[5]) / 1000 if len(sys.argv) > 5 else 0.0
    secret = os.environ.get("FAULTS_SECRET") or None
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(max_workers=4))
    with tempfile.TemporaryDirectory() as work:
        engine = await WorkflowEngine.create(backend, work_dir=work)
        learner = build(engine, name, secret)
        tracker = BusTracker(bus=bus_file, flush_timeout_ms=120_000, start_wait_ms=2000)
        learner.add_tracker(FileTracker(ref_dir))
        learner.add_tracker(tracker)
        try:
            async for _state in learner.start(max_iter=int(iterations)):
                if pace_s:
                    await asyncio.sleep(pace_s)
        finally:
            tracker.close()  # waits (bounded) for a broker that is down or stopped
            await engine.shutdown()
    print(json.dumps({"run": learner.run_id, **tracker.stats()}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
