"""ROSE: active, reinforcement and UQ learners on HPC, with event-sourced tracking."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rose")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"

from rose.learner import LearnerConfig, TaskConfig  # noqa: E402
from rose.tracking import (  # noqa: E402
    CriterionManifest,
    IterationState,
    PipelineManifest,
    TaskManifest,
    TrackerBase,
)

__all__ = [
    "TrackerBase",
    "PipelineManifest",
    "TaskManifest",
    "CriterionManifest",
    "IterationState",
    "LearnerConfig",
    "TaskConfig",
    "__version__",
]
