"""The Sink interface: what a backend implements; the runtime does the rest.

Like OpenTelemetry's exporters, a sink is small and reports results as
values: the runtime (:mod:`sinks.runtime`) owns ordering, dedupe, retries,
checkpoints and catch-up, so a backend only turns ordered events of one run
into writes.  One :class:`RunSink` is opened per run; calls on it never
overlap, but may come from different worker threads: a call that hangs keeps
its thread while the other runs' calls go on on another.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Outcome(enum.Enum):
    """What happened to a batch handed to :meth:`RunSink.apply`."""

    SUCCESS = "success"  # every event applied
    RETRY = "retry"  # a transient failure: retry the unapplied events later
    REJECT = "reject"  # the first unapplied event can never be applied: skip it


@dataclass(frozen=True)
class ApplyResult:
    """How far a batch got; ``applied`` events from its start are done for good."""

    applied: int
    outcome: Outcome = Outcome.SUCCESS
    error: str = ""
    #: A backend's own hint (e.g. HTTP Retry-After), in seconds; None = use the backoff.
    retry_after_s: float | None = None

    @classmethod
    def ok(cls, applied: int) -> ApplyResult:
        return cls(applied)

    @classmethod
    def retry(cls, applied: int, error: str, retry_after_s: float | None = None) -> ApplyResult:
        return cls(applied, Outcome.RETRY, error, retry_after_s)

    @classmethod
    def reject(cls, applied: int, error: str) -> ApplyResult:
        return cls(applied, Outcome.REJECT, error)


class RunSink:
    """The backend of one run.  Override :meth:`apply`; the rest has defaults."""

    def resume_seq(self) -> int | None:
        """The next seq the backend expects, when it can tell (e.g. a file's last line).

        The runtime starts the run at the larger of this and its checkpoint, so
        a backend that remembers what it holds never receives an event twice.
        """
        return None

    def apply(
        self, events: list[dict[str, Any]], lines: list[str | None] | None = None
    ) -> ApplyResult:
        """Apply ``events`` (consecutive seqs of this run, in order).

        ``lines``, when given, holds each event's JSON line as recorded in the
        log it was replayed from (or None): a backend that stores JSON lines
        may write them as they are instead of serializing the event again.
        Exceptions are allowed (the runtime treats them as ``RETRY`` with
        nothing applied) but a result says more.
        """
        raise NotImplementedError

    def flush(self) -> bool:
        """Push buffered writes to durable storage; False when that failed."""
        return True

    def close(self) -> None:
        """Release the run's resources; called once, after the run's last apply."""


class Sink:
    """A sink kind: opens one :class:`RunSink` per run.

    ``idempotent`` says whether a run sink knows what it already holds
    (``resume_seq``); the runtime checkpoints after every batch for sinks that
    do not, so a crash repeats at most one batch.
    """

    name = "sink"
    idempotent = False

    def open_run(self, run: str) -> RunSink:
        raise NotImplementedError

    def claim_outputs(self) -> None:
        """Make what this sink writes its own (e.g. a lock in its output directory).

        Called by the runtime before the first event; raise
        :class:`sinks.state.OutputBusy` (a ValueError) when another live sink
        writes the same output: two sinks on one output write every event twice.
        """

    def release_outputs(self) -> None:
        """Undo :meth:`claim_outputs`; called once when the runtime stops."""

    def stats(self) -> dict[str, Any]:
        """The kind's own counters for ``rose status`` (e.g. Slack posts that may be lost)."""
        return {}

    def shutdown(self) -> None:
        """Release shared resources; called once when the runtime stops."""
