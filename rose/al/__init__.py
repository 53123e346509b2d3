from rose.al.active_learner import ParallelActiveLearner, SequentialActiveLearner

__all__ = ["SequentialActiveLearner", "ParallelActiveLearner"]
