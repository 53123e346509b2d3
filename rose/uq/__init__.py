"""UQ learners: active learning driven by the uncertainty of a model ensemble."""

from rose.uq.uq_active_learner import ParallelUQLearner, SeqUQLearner
from rose.uq.uq_learner import (
    MODEL_NAME_KWARG,
    PREDICTION_INDEX_KWARG,
    UQLearner,
    UQLearnerConfig,
)
from rose.uq.uq_scorer import UQ_REGISTRY, UQScorer, register_uq

__all__ = [
    "UQLearner",
    "UQLearnerConfig",
    "SeqUQLearner",
    "ParallelUQLearner",
    "UQScorer",
    "UQ_REGISTRY",
    "register_uq",
    "MODEL_NAME_KWARG",
    "PREDICTION_INDEX_KWARG",
]
