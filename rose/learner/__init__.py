"""The learner core shared by every learner family (active, reinforcement, UQ).

It holds what all learners have in common: task registration through
decorators (``tasks``), per-iteration task configuration, submitting tasks to
a ``radical.asyncflow.WorkflowEngine``, turning task results into
``IterationState`` (``base``, ``results``), the stop criterion, the state
registry (``state``), and the one tracker lifecycle (``fanout``, ``loop``):
``on_start`` at ``add_tracker``, ``on_iteration`` before each yield,
``on_stop`` exactly once with the reason the run ended.

A learner family only writes its loop: hooks plugged into the one iteration
skeleton over a *lane* (one sequential learner, ``lanes``) that yields
IterationState.  ``_run`` wraps lanes in the lifecycle; parallel learners
(``parallel``) run several lanes and stream their states as they arrive.
ROSE 0.3's ``teach()``/``learn()`` are written by ``deprecated``.
"""

from rose.config import LearnerConfig, Schedule, TaskConfig
from rose.learner.base import Learner, Metrics
from rose.learner.lanes import Lane
from rose.learner.parallel import ParallelLearner
from rose.learner.tasks import task_decorator
from rose.tracking import IterationState

__all__ = [
    "IterationState",
    "Lane",
    "Learner",
    "LearnerConfig",
    "Metrics",
    "ParallelLearner",
    "Schedule",
    "TaskConfig",
    "task_decorator",
]
