"""Reinforcement learners: sequential, parallel, and parallel experience collection."""

from rose.rl.experience import ExperienceBank, merge_banks
from rose.rl.reinforcement_learner import (
    ParallelExperience,
    ParallelReinforcementLearner,
    SequentialReinforcementLearner,
)

__all__ = [
    "SequentialReinforcementLearner",
    "ParallelReinforcementLearner",
    "ParallelExperience",
    "ExperienceBank",
    "merge_banks",
]
