"""ROSE: active, reinforcement and UQ learners on HPC, with event-sourced tracking."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rose")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"

from rose import metrics as _metrics  # noqa: E402
from rose.metrics import LearningMetrics  # noqa: E402
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
    "Learner",
    "LearnerConfig",
    "LearningMetrics",
    "TaskConfig",
    "__version__",
]

# Every metric name and operator constant, as ``rose.MEAN_SQUARED_ERROR_MSE``.
globals().update({k: v for k, v in vars(_metrics).items() if k.isupper() and type(v) is str})

# Loaded on first use: the learner core imports radical.asyncflow and pydantic
# (~0.3 s), and brokers, sinks and the CLI import rose.events without them.
_LAZY = (
    "Learner",
    "LearnerConfig",
    "TaskConfig",
    "learner",
    "al",
    "active_learner",
    "selector",
    "rl",
    "reinforcement_learner",
    "uq",
    "uq_learner",
    "uq_active_learner",
    "uq_scorer",
)


def __getattr__(name: str):
    # ``import rose.x as value``, not ``from rose import x``: the latter asks this
    # function for ``x`` again before importing it.
    if name == "Learner":
        from rose.learner import Learner as value
    elif name in ("LearnerConfig", "TaskConfig"):
        import rose.config as config

        value = getattr(config, name)
    elif name == "learner":
        import rose.learner as value
    elif name == "al":
        import rose.al as value
    elif name == "active_learner":
        import rose.al.active_learner as value
    elif name == "selector":
        import rose.al.selector as value
    elif name == "rl":
        import rose.rl as value
    elif name == "reinforcement_learner":
        import rose.rl.reinforcement_learner as value
    elif name == "uq":
        import rose.uq as value
    elif name == "uq_learner":
        import rose.uq.uq_learner as value
    elif name == "uq_active_learner":
        import rose.uq.uq_active_learner as value
    elif name == "uq_scorer":
        import rose.uq.uq_scorer as value
    else:
        raise AttributeError(f"module 'rose' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
