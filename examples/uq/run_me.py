"""UQ active learning with a scikit-learn GP ensemble, tracked by the built-in FileTracker.

    python examples/uq/run_me.py [--max-iter 25] [--learners A B] [--out runs/]

Every iteration trains each model of the ensemble, draws 3 predictions per
model, scores their predictive variance on the unlabeled pool, labels the
``query_size`` most uncertain points, and validates each model on a test set.
The run stops when every model's test MSE is below the threshold, or when the
ensemble's mean predictive variance is below its own threshold.  Both fall as
points are labeled: the model knows where it is unsure, and labeling there is
what makes it right (ensemble_problem.py says why the kernels are fixed).
With ``--learners A B``, a ParallelUQLearner runs one such loop per name, each
from its own random start; every state carries its learner's name.

How tasks know their model: ``kwargs["--model_name"]``; a prediction's index
among its model's predictions is ``kwargs["--iteration"]``.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ensemble_problem import MODELS, EnsembleProblem
from radical.asyncflow import WorkflowEngine
from rhapsody.backends import ConcurrentExecutionBackend

from rose import TaskConfig
from rose.integrations.file_tracker import FileTracker
from rose.metrics import MEAN_SQUARED_ERROR_MSE, PREDICTIVE_VARIANCE
from rose.uq import (
    MODEL_NAME_KWARG,
    PREDICTION_INDEX_KWARG,
    ParallelUQLearner,
    SeqUQLearner,
    UQLearnerConfig,
)

NUM_PREDICTIONS = 3
QUERY_SIZE = 5


async def main(max_iter: int, learners: list[str], out: Path, mse: float, variance: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(max_workers=2))
    engine = await WorkflowEngine.create(backend, work_dir=str(out))
    names = learners or ["main"]
    problems = {name: EnsembleProblem(seed=i) for i, name in enumerate(names)}
    if learners:
        learner = ParallelUQLearner(engine, learner_names=learners, run_name="gp-uq-parallel")
    else:
        learner = SeqUQLearner(engine, run_name="gp-uq")

    def problem(kwargs: dict) -> EnsembleProblem:
        return problems[kwargs.get("learner", "main")]

    # 1. Register tasks first
    @learner.simulation_task(as_executable=False, log_params={"function": "x*sin(x)"})
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
        threshold=variance,
        as_executable=False,
    )
    async def check_uq(predictions_by_model, **kwargs):
        predictions = [p for per_model in predictions_by_model for p in per_model]
        return problem(kwargs).uncertainty(predictions, QUERY_SIZE)

    @learner.active_learn_task(as_executable=False)
    async def active_learn(uq_result, **kwargs):
        return problem(kwargs).active_learn(uq_result["query"])

    @learner.as_stop_criterion(
        metric_name=MEAN_SQUARED_ERROR_MSE, threshold=mse, as_executable=False
    )
    async def check_mse(*args, **kwargs):
        return problem(kwargs).test_mse(kwargs[MODEL_NAME_KWARG])

    # 2. Attach the tracker: on_start(manifest) fires here
    tracker = FileTracker(out)
    learner.add_tracker(tracker)

    # 3. Start the loop: control logic only, tracking is automatic
    models = list(MODELS)
    finals = {}
    firsts = {}
    try:
        if learners:
            roles = ("simulation", "training", "prediction", "uncertainty", "active_learn")
            configs = {
                n: UQLearnerConfig(
                    **{r: TaskConfig(kwargs={"learner": n}) for r in roles},
                    criterion=TaskConfig(kwargs={"learner": n}),
                )
                for n in learners
            }
            states = learner.start(
                learner_names=learners,
                model_names=models,
                num_predictions=NUM_PREDICTIONS,
                max_iter=max_iter,
                learner_configs=configs,
            )
        else:
            states = learner.start(models, num_predictions=NUM_PREDICTIONS, max_iter=max_iter)
        async for state in states:
            finals[state.learner_id] = state
            firsts.setdefault(state.learner_id, state)
            who = f"[{state.learner_id}] " if state.learner_id is not None else ""
            mse_text = f"{state.metric_value:.4f}" if state.metric_value is not None else "  -   "
            print(
                f"{who}iteration {state.iteration:2d}  labeled {state.n_labeled:3d}  "
                f"mean test MSE {mse_text}  predictive variance {state.uq_value:.5f}"
            )
    finally:
        await engine.shutdown()

    print()
    print(f"event log:     {tracker.path}")
    for name, final in finals.items():
        verdict = "stop criterion met" if final.should_stop else "max_iter reached"
        who = f"[{name}] " if name is not None else ""
        value = (
            f"{MEAN_SQUARED_ERROR_MSE} = {final.metric_value:.4f}"
            if final.metric_value is not None
            else f"{PREDICTIVE_VARIANCE} = {final.uq_value:.5f}"
        )
        print(f"final metric:  {who}{value} after {final.iteration + 1} iterations ({verdict})")
    for name, final in finals.items():
        first, who = firsts[name], f"[{name}] " if name is not None else ""
        if first.metric_value is None or final.metric_value is None:
            continue
        print(
            f"what it shows: {who}labeling the {QUERY_SIZE} most uncertain points per iteration "
            f"({first.n_labeled} -> {final.n_labeled} labeled), the ensemble's predictive "
            f"variance on the pool fell {first.uq_value:.3g} -> {final.uq_value:.3g} and the "
            f"mean test MSE {first.metric_value:.3g} -> {final.metric_value:.3g}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-iter", type=int, default=25)
    parser.add_argument("--learners", nargs="*", default=[], help="names: run a ParallelUQLearner")
    parser.add_argument("--mse", type=float, default=0.05, help="test MSE every model must reach")
    parser.add_argument(
        "--variance", type=float, default=0.001, help="predictive variance to reach"
    )
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    asyncio.run(main(args.max_iter, args.learners, args.out, args.mse, args.variance))
