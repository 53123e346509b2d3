"""Branin–Hoo GP active learning, tracked by the built-in FileTracker.

    python examples/integrations/tracking/run_me.py [--max-iter 30] [--out runs/]

Stops when the surrogate's test MSE drops below 0.01 (targets scaled to [0, 1]).
The event log it writes replays into any tracker (rose replay, or
rose.integrations.file_tracker.replay).
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from branin_problem import BraninProblem
from radical.asyncflow import WorkflowEngine
from rhapsody.backends import ConcurrentExecutionBackend

from rose.al import SequentialActiveLearner
from rose.integrations.file_tracker import FileTracker
from rose.metrics import MEAN_SQUARED_ERROR_MSE


async def main(max_iter: int, out: Path, threshold: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor())
    engine = await WorkflowEngine.create(backend, work_dir=str(out))
    learner = SequentialActiveLearner(engine, run_name="branin-gp")
    problem = BraninProblem(seed=0)

    # 1. Register tasks first
    @learner.simulation_task(as_executable=False)
    async def simulation(*args, **kwargs):
        return problem.simulate()

    @learner.training_task(as_executable=False, log_params={"model": "GP", "kernel": "C*RBF+White"})
    async def training(*args, **kwargs):
        return problem.train()

    @learner.active_learn_task(as_executable=False, log_params={"batch": problem.batch})
    async def active_learn(*args, **kwargs):
        return problem.active_learn()

    @learner.as_stop_criterion(metric_name=MEAN_SQUARED_ERROR_MSE, threshold=threshold, as_executable=False)
    async def check_mse(*args, **kwargs):
        return problem.test_mse()

    # 2. Attach the tracker: on_start(manifest) fires here
    tracker = FileTracker(out)
    learner.add_tracker(tracker)

    # 3. Start the loop: control logic only, tracking is automatic
    final = None
    try:
        async for state in learner.start(max_iter=max_iter):
            final = state
            print(
                f"iteration {state.iteration:2d}  test MSE {state.metric_value:.5f}  "
                f"labeled {state.n_labeled:3d}  max std {state.max_std:.3f}"
            )
    finally:
        await engine.shutdown()

    print()
    print(f"event log:     {tracker.path}")
    if final is not None:
        verdict = "criterion met" if final.should_stop else "max_iter reached"
        print(f"final metric:  {MEAN_SQUARED_ERROR_MSE} = {final.metric_value:.5f} "
              f"after {final.iteration + 1} iterations ({verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    asyncio.run(main(args.max_iter, args.out, args.threshold))
