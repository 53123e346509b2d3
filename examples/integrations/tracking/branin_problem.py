"""Branin–Hoo surrogate modelling: the science problem behind the tracking examples.

A Gaussian-process surrogate learns the Branin–Hoo function on
[-5, 10] × [0, 15] from as few "simulations" as possible: each iteration
labels the pool points where the GP is least certain.  Targets are scaled
to [0, 1], so the test MSE reads the same for any run.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

LOW, HIGH = np.array([-5.0, 0.0]), np.array([10.0, 15.0])
Y_MIN, Y_MAX = 0.397887, 308.129  # Branin's range on the domain

# Kernel hyperparameters sit at their bounds on the first few points; that is expected
# here. (A module-level filter: catch_warnings is not thread-safe, and tasks run in threads.)
warnings.filterwarnings("ignore", category=ConvergenceWarning)


def branin(x: np.ndarray) -> np.ndarray:
    x1, x2 = x[:, 0], x[:, 1]
    a, b, c = 1.0, 5.1 / (4 * np.pi**2), 5 / np.pi
    r, s, t = 6.0, 10.0, 1 / (8 * np.pi)
    y = a * (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * np.cos(x1) + s
    return (y - Y_MIN) / (Y_MAX - Y_MIN)


class BraninProblem:
    """Data and model of one learner; tasks of that learner share it."""

    def __init__(self, seed: int = 0, n_initial: int = 3, batch: int = 1, pool: int = 1500) -> None:
        rng = np.random.default_rng(seed)
        self.pool = LOW + (HIGH - LOW) * rng.random((pool, 2))
        self.x_test = LOW + (HIGH - LOW) * rng.random((400, 2))
        self.y_test = branin(self.x_test)
        self.batch = batch
        self.to_label = rng.choice(pool, n_initial, replace=False)
        self.x = np.empty((0, 2))
        self.y = np.empty(0)
        self.model: GaussianProcessRegressor | None = None
        self._lock = threading.Lock()

    def simulate(self) -> dict:
        """Run the 'simulation' on the points picked last: label them."""
        with self._lock:
            new = self.pool[self.to_label]
            self.pool = np.delete(self.pool, self.to_label, axis=0)
            self.x = np.vstack([self.x, new])
            self.y = np.concatenate([self.y, branin(new)])
            return {"n_labeled": int(len(self.y)), "pool_left": int(len(self.pool))}

    def train(self) -> dict:
        with self._lock:
            kernel = ConstantKernel(1.0) * RBF(length_scale=[3.0, 3.0]) + WhiteKernel(1e-6, noise_level_bounds=(1e-10, 1e-2))
            model = GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=0)
            model.fit(self.x, self.y)
            self.model = model
            train_mse = float(np.mean((model.predict(self.x) - self.y) ** 2))
            return {
                "train_mse": train_mse,
                "log_marginal_likelihood": float(model.log_marginal_likelihood_value_),
            }

    def active_learn(self) -> dict:
        """Pick the pool points with the largest predictive standard deviation."""
        with self._lock:
            _, std = self.model.predict(self.pool, return_std=True)
            self.to_label = np.argsort(std)[-self.batch :]
            return {"max_std": float(std.max()), "mean_std": float(std.mean())}

    def test_mse(self) -> float:
        with self._lock:
            return float(np.mean((self.model.predict(self.x_test) - self.y_test) ** 2))


def register_tasks(learner, problem: BraninProblem, threshold: float = 0.01) -> None:
    """Register the pipeline of run_me.py on ``learner``: for the examples whose subject
    is a tracker (MLflow, Slack, the bus), not the tasks."""
    from rose.metrics import MEAN_SQUARED_ERROR_MSE

    @learner.simulation_task(as_executable=False)
    async def simulation(*args, **kwargs):
        return problem.simulate()

    @learner.training_task(as_executable=False, log_params={"model": "GP", "kernel": "C*RBF+White"})
    async def training(*args, **kwargs):
        return problem.train()

    @learner.active_learn_task(as_executable=False, log_params={"batch": problem.batch})
    async def active_learn(*args, **kwargs):
        return problem.active_learn()

    @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=threshold, as_executable=False)
    async def check_mse(*args, **kwargs):
        return problem.test_mse()
