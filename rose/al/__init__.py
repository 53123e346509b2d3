from rose.al.active_learner import ParallelActiveLearner, SequentialActiveLearner
from rose.al.selector import AlgorithmSelector

__all__ = ["SequentialActiveLearner", "ParallelActiveLearner", "AlgorithmSelector"]
