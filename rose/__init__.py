"""ROSE: active, reinforcement and UQ learners on HPC, with event-sourced tracking."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rose")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"

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


def __getattr__(name: str):
    # The learner core imports radical.asyncflow (~0.2 s); brokers, sinks and the
    # CLI import rose.events without it, so load it only when asked for.
    if name in ("LearnerConfig", "TaskConfig"):
        from rose import learner

        return getattr(learner, name)
    raise AttributeError(f"module 'rose' has no attribute {name!r}")
