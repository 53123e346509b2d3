"""Two named UQ learners (A, B) on a GP ensemble, tracked as one ClearML task.

    pip install -e '.[clearml]'   # from the repository clone
    python examples/integrations/tracking/clearml/run_me.py [--max-iter 15]
    CLEARML_OFFLINE_MODE=1 python examples/integrations/tracking/clearml/run_me.py  # no server

The task gets the pipeline manifest as hyperparameters, one scalar graph per
metric/state key with one series per learner (A and B side by side), and the
stop reason and final iteration as tags.  Offline, the session is written
under ``$CLEARML_CACHE_DIR/offline/`` (default ``~/.clearml/cache``); import it
into a server later with ``clearml-task --import-offline-session <zip>``.
The loop below holds no ClearML calls.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The UQ science problem lives with the UQ example.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "uq"))

from ensemble_problem import MODELS, EnsembleProblem  # noqa: E402
from radical.asyncflow import WorkflowEngine  # noqa: E402
from rhapsody.backends import ConcurrentExecutionBackend  # noqa: E402

from rose import TaskConfig  # noqa: E402
from rose.integrations.clearml_tracker import ClearMLTracker  # noqa: E402
from rose.metrics import MEAN_SQUARED_ERROR_MSE, PREDICTIVE_VARIANCE  # noqa: E402
from rose.uq import (  # noqa: E402
    MODEL_NAME_KWARG,
    PREDICTION_INDEX_KWARG,
    ParallelUQLearner,
    UQLearnerConfig,
)

LEARNERS = ["A", "B"]
NUM_PREDICTIONS = 3
QUERY_SIZE = 5


async def main(max_iter: int, project: str, task_name: str, work_dir: Path) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(max_workers=2))
    engine = await WorkflowEngine.create(backend, work_dir=str(work_dir))
    learner = ParallelUQLearner(engine, learner_names=LEARNERS, run_name="ensemble-run")
    problems = {name: EnsembleProblem(seed=i) for i, name in enumerate(LEARNERS)}

    def problem(kwargs: dict) -> EnsembleProblem:
        return problems[kwargs["learner"]]

    # 1. Register tasks first
    @learner.simulation_task(as_executable=False, log_params={"function": "x*sin(x)+2*sin(4x)"})
    async def simulation(*args, **kwargs):
        return problem(kwargs).simulate()

    @learner.training_task(as_executable=False, log_params={"kernels": "RBF, Matern(2.5)"})
    async def training(*args, **kwargs):
        return problem(kwargs).train(kwargs[MODEL_NAME_KWARG])

    @learner.prediction_task(as_executable=False)
    async def prediction(*args, **kwargs):
        return problem(kwargs).predict(kwargs[MODEL_NAME_KWARG], kwargs[PREDICTION_INDEX_KWARG])

    @learner.uncertainty_quantification(
        uq_metric_name=PREDICTIVE_VARIANCE,
        query_size=QUERY_SIZE,
        threshold=1e-3,
        as_executable=False,
    )
    async def check_uq(predictions_by_model, **kwargs):
        predictions = [p for per_model in predictions_by_model for p in per_model]
        return problem(kwargs).uncertainty(predictions, QUERY_SIZE)

    @learner.active_learn_task(as_executable=False)
    async def active_learn(uq_result, **kwargs):
        return problem(kwargs).active_learn(uq_result["query"])

    @learner.as_stop_criterion(
        metric_name=MEAN_SQUARED_ERROR_MSE, threshold=0.05, as_executable=False
    )
    async def check_mse(*args, **kwargs):
        return problem(kwargs).test_mse(kwargs[MODEL_NAME_KWARG])

    # 2. Attach the tracker: on_start(manifest) fires here
    tracker = ClearMLTracker(project_name=project, task_name=task_name)
    learner.add_tracker(tracker)

    # 3. Start the loop: control logic only, tracking is automatic
    roles = ("simulation", "training", "prediction", "uncertainty", "active_learn", "criterion")
    configs = {
        n: UQLearnerConfig(**{r: TaskConfig(kwargs={"learner": n}) for r in roles})
        for n in LEARNERS
    }
    task_id = None
    try:
        async for state in learner.start(
            learner_names=LEARNERS,
            model_names=list(MODELS),
            num_predictions=NUM_PREDICTIONS,
            max_iter=max_iter,
            learner_configs=configs,
        ):
            task_id = task_id or tracker.task_id
            mse = f"{state.metric_value:.4f}" if state.metric_value is not None else "  -   "
            print(
                f"[{state.learner_id}] iteration {state.iteration:2d}  labeled {state.n_labeled:3d}"
                f"  mean test MSE {mse}  predictive variance {state.uq_value:.5f}"
            )
    finally:
        await engine.shutdown()
    print(f"\nClearML task: {task_id} (project {project!r}, name {task_name!r})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-iter", type=int, default=15)
    parser.add_argument("--project", default="ROSE-Materials-UQ")
    parser.add_argument("--task-name", default="ensemble-run-01")
    parser.add_argument("--work-dir", type=Path, default=Path("runs"))
    args = parser.parse_args()
    asyncio.run(main(args.max_iter, args.project, args.task_name, args.work_dir))
