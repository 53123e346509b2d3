"""Reinforcement learners: sequential, parallel, and parallel experience collection."""

from rose.rl.experience import Experience, ExperienceBank, create_experience, merge_banks
from rose.rl.reinforcement_learner import (
    ParallelExperience,
    ParallelReinforcementLearner,
    ReinforcementLearner,
    SequentialReinforcementLearner,
)

__all__ = [
    "Experience",
    "ExperienceBank",
    "ReinforcementLearner",
    "SequentialReinforcementLearner",
    "ParallelReinforcementLearner",
    "ParallelExperience",
    "create_experience",
    "merge_banks",
]
