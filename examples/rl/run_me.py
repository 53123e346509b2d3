"""Q-learning on a slippery corridor, tracked by the built-in FileTracker.

    python examples/rl/run_me.py [--max-iter 40] [--actors 1] [--out runs/]

Each iteration the environment task plays a few episodes with the current
epsilon-greedy policy and hands the transitions (an ExperienceBank) to the
update task, which replays them through Q-learning; the stop criterion tests
the greedy policy and stops once its mean return reaches the threshold.
With ``--actors N`` (N > 1), N named environments collect in parallel and
their banks are merged into one update (ParallelExperience).
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from corridor import Corridor, QAgent
from radical.asyncflow import WorkflowEngine
from rhapsody.backends import ConcurrentExecutionBackend

from rose import LearnerConfig, TaskConfig
from rose.integrations.file_tracker import FileTracker
from rose.metrics import REWARD
from rose.rl import ParallelExperience, SequentialReinforcementLearner


async def main(max_iter: int, actors: int, out: Path, threshold: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(max_workers=2))
    engine = await WorkflowEngine.create(backend, work_dir=str(out))
    agent = QAgent(Corridor(length=12, slip=0.1, max_steps=60), lr=0.2, seed=0)

    # 1. Register tasks first
    if actors > 1:
        learner = ParallelExperience(engine, run_name="corridor-q-parallel")
        for k in range(actors):

            async def collect(*args, **kwargs):
                return agent.collect(**kwargs)

            learner.environment_task(name=f"actor_{k}", as_executable=False)(collect)
    else:
        learner = SequentialReinforcementLearner(engine, run_name="corridor-q")

        @learner.environment_task(as_executable=False, log_params={"env": "corridor-10"})
        async def collect(*args, **kwargs):
            return agent.collect(**kwargs)

    @learner.update_task(as_executable=False, log_params={"algo": "q-learning", "gamma": 0.95})
    async def update(bank, **kwargs):
        return agent.update(bank)

    @learner.as_stop_criterion(metric_name=REWARD, threshold=threshold, as_executable=False)
    async def test_policy(*args, **kwargs):
        return agent.evaluate()

    # 2. Attach the tracker: on_start(manifest) fires here
    tracker = FileTracker(out)
    learner.add_tracker(tracker)

    # Explore a lot at first, less later (a per-iteration TaskConfig schedule: an
    # iteration's own entry, else the one under -1).
    config = LearnerConfig(
        environment={
            **{i: TaskConfig(kwargs={"episodes": 3, "epsilon": 0.6}) for i in range(3)},
            -1: TaskConfig(kwargs={"episodes": 3, "epsilon": 0.3}),
        }
    )

    # 3. Start the loop: control logic only, tracking is automatic
    final = None
    try:
        async for state in learner.start(max_iter=max_iter, initial_config=config):
            final = state
            print(
                f"iteration {state.iteration:2d}  greedy return {state.metric_value:+.3f}  "
                f"success {state.success_rate:4.0%}  TD error {state.td_error:.4f}  "
                f"transitions {state.transitions}"
            )
    finally:
        await engine.shutdown()

    print()
    print(f"event log:     {tracker.path}")
    if final is not None:
        verdict = "criterion met" if final.should_stop else "max_iter reached"
        print(
            f"final metric:  {REWARD} = {final.metric_value:.3f} "
            f"after {final.iteration + 1} iterations ({verdict})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-iter", type=int, default=40)
    parser.add_argument("--actors", type=int, default=1, help="parallel environments (>1: merged)")
    parser.add_argument("--threshold", type=float, default=0.8, help="greedy mean return to reach")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    asyncio.run(main(args.max_iter, args.actors, args.out, args.threshold))
