"""Small deterministic pipelines whose state exercises every branch of the mapping."""

from __future__ import annotations

from rose.metrics import MEAN_SQUARED_ERROR_MSE


def register(learner, mse=(0.5, 0.2, 0.05, 0.009), *, fail_at: int | None = None):
    """Function tasks returning numbers, a string, a nested map and a bool; MSE < 0.01."""
    counts = {"crit": 0, "train": 0}

    @learner.simulation_task(as_executable=False)
    async def simulation(*args, **kwargs):
        return {"n_samples": 5}

    @learner.training_task(
        as_executable=False, num_gpus=2, log_params={"kernel": "rbf", "opt": {"lr": 0.1}}
    )
    async def training(*args, **kwargs):
        counts["train"] += 1
        if fail_at is not None and counts["train"] > fail_at:
            raise RuntimeError("training diverged")
        k = counts["train"]
        return {"train_loss": 1.0 / k, "kernel_used": "rbf", "losses": {"a": 0.5 * k}, "ok": True}

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*args, **kwargs):
        return {"n_labeled": 10 + 5 * counts["train"]}

    @learner.as_stop_criterion(
        metric_name=MEAN_SQUARED_ERROR_MSE, threshold=0.01, as_executable=False
    )
    async def check_mse(*args, **kwargs):
        counts["crit"] += 1
        return mse[min(counts["crit"], len(mse)) - 1]

    return learner
