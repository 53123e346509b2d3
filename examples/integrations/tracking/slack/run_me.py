"""Branin–Hoo GP active learning that tells a Slack channel how it went.

    export ROSE_SLACK_WEBHOOK=https://hooks.slack.com/services/...   # the channel's webhook
    python examples/integrations/tracking/slack/run_me.py [--max-iter 30]

Posts when the run starts, when the test MSE first drops below each
milestone, and when it stops (iterations, reason, final metric).  The webhook
URL is a secret: it is read from $ROSE_SLACK_WEBHOOK (or a 0600 file with
--webhook-file), never from the command line.  Posting runs beside the
learner, paced to Slack's rate limit; the loop below holds no Slack calls.

To keep Slack off the compute nodes entirely, publish with bus.BusTracker and
run ``rose sink slack --bus STORE/bus.json --notify-start --milestones 0.1,0.03``
on the login node: same messages, each posted once even across restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The science problem is shared by every tracking example, one directory up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from branin_problem import BraninProblem, register_tasks  # noqa: E402
from radical.asyncflow import WorkflowEngine  # noqa: E402
from rhapsody.backends import ConcurrentExecutionBackend  # noqa: E402

from rose.al import SequentialActiveLearner  # noqa: E402
from rose.integrations.slack_tracker import SlackTracker  # noqa: E402


async def main(args: argparse.Namespace) -> int:
    try:  # fail before any work if the webhook is missing or exposed
        tracker = SlackTracker(
            webhook_file=args.webhook_file, notify_start=True, milestones=args.milestones
        )
    except ValueError as exc:
        print(f"run_me.py: {exc}", file=sys.stderr)
        return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor())
    engine = await WorkflowEngine.create(backend, work_dir=str(args.work_dir))
    learner = SequentialActiveLearner(engine, run_name="branin-gp")
    problem = BraninProblem(seed=0)

    register_tasks(learner, problem, args.threshold)  # 1. the tasks of run_me.py

    # 2. Attach the tracker: on_start(manifest) fires here (and posts the start message)
    learner.add_tracker(tracker)

    # 3. Start the loop: control logic only, tracking is automatic
    try:
        async for state in learner.start(max_iter=args.max_iter):
            print(f"iteration {state.iteration:2d}  test MSE {state.metric_value:.5f}")
    finally:
        await engine.shutdown()
    print(f"\nSlack: {tracker.sent} message(s) posted, {tracker.failed} failed")
    return 0 if tracker.failed == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument(
        "--milestones", type=float, nargs="*", default=[0.1, 0.03], help="MSE values to announce"
    )
    parser.add_argument("--webhook-file", type=Path, help="a 0600 file holding the webhook URL")
    parser.add_argument("--work-dir", type=Path, default=Path("runs"))
    sys.exit(asyncio.run(main(parser.parse_args())))
