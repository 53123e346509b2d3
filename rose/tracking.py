"""The tracking API: what a tracker sees of a run.

A tracker is any object with ``on_start``, ``on_iteration`` and ``on_stop``.
The learner calls them; trackers only observe.  Each call is one *event* of
the run (see :mod:`rose.events`): the learner stamps the run id, the event's
sequence number and its emit time once per call and shares them with every
tracker through :func:`event_context`, so that every tracker attached to one
learner (and any tracker replayed from that run's event log later) agrees on
them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rose.config import LearnerConfig

STOP_REASONS = ("criterion_met", "max_iter_reached", "stopped", "error")


class TrackerBase:
    """Observer of a learner run.  Every method defaults to a no-op."""

    def on_start(self, manifest: PipelineManifest) -> None:
        """Called once inside ``add_tracker()``, with the complete pipeline manifest."""

    def on_iteration(self, state: IterationState) -> None:
        """Called once per iteration, just before the learner yields ``state``."""

    def on_stop(self, final_state: IterationState | None, reason: str) -> None:
        """Called exactly once when the run ends; ``reason`` is one of STOP_REASONS."""


@dataclass
class TaskManifest:
    func_name: str
    func_module: str
    as_executable: bool
    decor_kwargs: dict = field(default_factory=dict)  # backend only, never leaves the process
    log_params: dict = field(default_factory=dict)


@dataclass
class CriterionManifest(TaskManifest):
    metric_name: str = ""
    threshold: float = 0.0
    operator: str = ""


@dataclass
class PipelineManifest:
    learner_type: str
    tasks: dict[str, TaskManifest] = field(default_factory=dict)
    criterion: CriterionManifest | None = None
    parallel_count: int | None = None


@dataclass
class IterationState:
    """What one iteration produced.

    ``state`` holds every key of every dict a task returned this iteration;
    its keys also read as attributes (``state.train_loss``), and a key no task
    returned reads as None, so ``if state.loss and state.loss < 0.1:`` needs no
    guard.  ``current_config`` is the LearnerConfig in effect (None if none).
    """

    iteration: int
    metric_name: str | None = None
    metric_value: float | None = None
    metric_threshold: float | None = None
    metric_history: list[float] = field(default_factory=list)
    should_stop: bool = False
    current_config: LearnerConfig | None = None
    learner_id: int | str | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: look them up in state.
        # Private names stay attribute errors, so copy, pickle and hasattr()
        # probes of protocols (``_repr_html_``, ``__array__``) behave.
        state = self.__dict__.get("state", {})
        if name in state:
            return state[name]
        if name.startswith("_"):
            raise AttributeError(name)
        return None

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """The fields, then every state key at the top level (a state key wins a clash)."""
        out: dict[str, Any] = {
            "iteration": self.iteration,
            "metric_name": self.metric_name,
            "metric_value": self.metric_value,
            "metric_threshold": self.metric_threshold,
            "metric_history": list(self.metric_history),
            "should_stop": self.should_stop,
            "learner_id": self.learner_id,
        }
        out.update(self.state)
        return out


@dataclass(frozen=True)
class EventContext:
    """Identity of the callback being delivered: shared by every tracker of a run."""

    run: str
    seq: int
    ts: float
    origin: dict[str, Any] | None = None


_current: contextvars.ContextVar[EventContext | None] = contextvars.ContextVar(
    "rose_event_context", default=None
)


def event_context() -> EventContext | None:
    """The context of the callback in progress, or None when a tracker is called by hand."""
    return _current.get()


@contextmanager
def delivering(ctx: EventContext) -> Iterator[EventContext]:
    """Make ``ctx`` the event context for the duration of one tracker callback."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
