"""Learners to track and a way to read back everything MLflow holds of a run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rose import LearnerConfig, TaskConfig
from rose.al import AlgorithmSelector, ParallelActiveLearner, SequentialActiveLearner
from rose.metrics import MEAN_SQUARED_ERROR_MSE


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


def build_learner(engine: Any, parallel: bool = False, fail_at: int | None = None, **kw: Any):
    """A small AL pipeline whose state mixes numbers, strings, bools, NaN and nested dicts."""
    if parallel:  # the manifest knows the count only when the constructor is told
        learner = ParallelActiveLearner(engine, parallel_learners=2, **kw)
    else:
        learner = SequentialActiveLearner(engine, **kw)
    counter = {"sim": 0, "crit": 0}

    @learner.simulation_task(as_executable=False, log_params={"pool": 1500, "sampler": "lhs"})
    async def simulation(*args, **kwargs):
        counter["sim"] += 1
        return {"n_labeled": 10 * counter["sim"], "label_source": "branin"}

    @learner.training_task(
        as_executable=False,
        num_gpus=4,  # a decor_kwarg: must never reach MLflow
        log_params={"kernel": "rbf", "opt": {"lr": 0.1, "steps": 5}},
    )
    async def training(*args, **kwargs):
        n = counter["sim"]
        return {
            "train_mse": 1.0 / n,
            "converged": n % 2 == 0,
            "lml": float("nan") if n == 2 else -10.0 * n,
            "losses": {"data": 0.5 / n, "prior": 0.1},
            "notes": ["a", "b"],
        }

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*args, **kwargs):
        return {"max_std": 0.9 / counter["sim"], "picked": None}

    @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.011, as_executable=False)
    async def check_mse(*args, **kwargs):
        counter["crit"] += 1
        if fail_at is not None and counter["crit"] > fail_at:
            raise RuntimeError("criterion exploded")
        return 0.5 / counter["crit"]

    return learner


def build_selector(engine: Any, **kw: Any) -> AlgorithmSelector:
    """Two active-learn algorithms on one pipeline; "greedy" meets the criterion first."""
    sel = AlgorithmSelector(engine, **kw)

    @sel.simulation_task(as_executable=False, log_params={"pool": 1500})
    async def simulation(*args, **kwargs):
        return {"n_labeled": 10, "label_source": "branin"}

    @sel.training_task(as_executable=False, log_params={"kernel": "rbf"})
    async def training(*args, **kwargs):
        return {"train_mse": 0.5, "converged": False}

    for name, step in (("greedy", 0.2), ("random", 0.1)):

        @sel.active_learn_task(name=name, as_executable=False, log_params={"step": step})
        async def pick(*args, _name=name, _step=step, **kwargs):
            return {"algo": _name, "step": _step}

    seen: dict[str, int] = {}

    @sel.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.011, as_executable=False)
    async def check_mse(picked, *args, **kwargs):
        n = seen[picked["algo"]] = seen.get(picked["algo"], 0) + 1
        return max(0.0, 0.5 - picked["step"] * n)

    return sel


def schedule() -> LearnerConfig:
    return LearnerConfig(
        training={
            0: TaskConfig(kwargs={"lr": 0.1, "optimizer": "adam"}),
            1: TaskConfig(kwargs={"lr": 0.1, "optimizer": "adam"}),
            -1: TaskConfig(kwargs={"lr": 0.01, "optimizer": "sgd"}),  # every later iteration
        }
    )


async def run_learner(learner: Any, parallel: bool = False, max_iter: int = 4) -> list:
    if parallel:
        gen = learner.start(
            parallel_learners=2, max_iter=max_iter, learner_configs=[schedule(), None]
        )
    else:
        gen = learner.start(max_iter=max_iter, initial_config=schedule())
    return [s async for s in gen]


def _value(v: float) -> Any:
    return "nan" if math.isnan(v) else v


def mlflow_content(tracking_uri: str, experiment: str, rose_run: str | None = None) -> dict:
    """Params, every metric history, tags, status and times of the experiment's runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {tracking_uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    out = {}
    for run in runs:
        rid = run.data.tags.get("rose.run_id")
        if rose_run is not None and rid != rose_run:
            continue
        histories = {}
        for key in run.data.metrics:
            hist = client.get_metric_history(run.info.run_id, key)
            histories[key] = sorted((m.step, m.timestamp, _value(m.value)) for m in hist)
        assert rid not in out, f"two MLflow runs for rose run {rid}"
        out[rid] = {
            "params": dict(run.data.params),
            "metrics": histories,
            "tags": dict(run.data.tags),
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "run_name": run.info.run_name,
        }
    return out
