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
_LAZY = {
    "Learner": ("rose.learner", "Learner"),
    "LearnerConfig": ("rose.config", "LearnerConfig"),
    "TaskConfig": ("rose.config", "TaskConfig"),
    "learner": ("rose.learner", None),
    "al": ("rose.al", None),
    "active_learner": ("rose.al.active_learner", None),
    "selector": ("rose.al.selector", None),
    "rl": ("rose.rl", None),
    "reinforcement_learner": ("rose.rl.reinforcement_learner", None),
    "uq": ("rose.uq", None),
    "uq_learner": ("rose.uq.uq_learner", None),
    "uq_active_learner": ("rose.uq.uq_active_learner", None),
    "uq_scorer": ("rose.uq.uq_scorer", None),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'rose' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
