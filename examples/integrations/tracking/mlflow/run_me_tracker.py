"""Branin–Hoo GP active learning, tracked in MLflow from inside the learner.

    pip install -e '.[mlflow]'   # from the repository clone
    python examples/integrations/tracking/mlflow/run_me_tracker.py [--max-iter 30]
    mlflow ui --backend-store-uri sqlite:///mlflow.db     # then open the run

The run goes to ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db``
in the current directory (``--tracking-uri`` overrides both).  Params come
from the pipeline manifest, metrics from each iteration, the stop reason is
a tag; the loop below holds no MLflow calls.
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
from rose.integrations.mlflow_tracker import MLflowTracker  # noqa: E402
from rose.metrics import MEAN_SQUARED_ERROR_MSE  # noqa: E402


async def main(max_iter: int, threshold: float, tracking_uri: str | None, work_dir: Path) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor())
    engine = await WorkflowEngine.create(backend, work_dir=str(work_dir))
    learner = SequentialActiveLearner(engine, run_name="branin-gp")
    problem = BraninProblem(seed=0)

    register_tasks(learner, problem, threshold)  # 1. the tasks of run_me.py

    # 2. Attach the tracker: on_start(manifest) fires here
    tracker = MLflowTracker(
        experiment_name="surrogate-v1",
        run_name="gp-adaptive-kernel",
        tracking_uri=tracking_uri,
    )
    learner.add_tracker(tracker)

    # 3. Start the loop: no mlflow calls here
    final = None
    try:
        async for state in learner.start(max_iter=max_iter):
            final = state
            print(
                f"iteration {state.iteration:2d}  test MSE {state.metric_value:.5f}  labeled {state.n_labeled:3d}"
            )
    finally:
        await engine.shutdown()

    print()
    print(
        f"MLflow run:    {tracker.mlflow_run_id}  (experiment surrogate-v1, rose run {learner.run_id})"
    )
    print(f"tracking URI:  {tracker.tracking_uri}")
    if final is not None:
        verdict = "criterion met" if final.should_stop else "max_iter reached"
        print(
            f"final metric:  {MEAN_SQUARED_ERROR_MSE} = {final.metric_value:.5f} "
            f"after {final.iteration + 1} iterations ({verdict})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("runs"),
        help="where the engine keeps its session folder",
    )
    args = parser.parse_args()
    asyncio.run(main(args.max_iter, args.threshold, args.tracking_uri, args.work_dir))
