"""The sink runtime's knobs, its retry policy, and its counters.

Every buffer and wait of the runtime is bounded by a field of
:class:`RuntimeConfig`; the CLI builds one from its options.  The backoff
between attempts of a failing event is decided here, next to its knobs.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_BATCH = 500
DEFAULT_BATCH_WAIT_MS = 50.0
DEFAULT_MAX_PENDING_PER_RUN = 10_000
DEFAULT_RETRY_INITIAL_MS = 100.0
DEFAULT_RETRY_MAX_MS = 30_000.0
DEFAULT_GAP_GRACE_MS = 5_000.0
DEFAULT_FILL_INTERVAL_MS = 500.0
DEFAULT_CHECKPOINT_INTERVAL_MS = 1_000.0
DEFAULT_STATUS_INTERVAL_MS = 1_000.0
DEFAULT_MAX_RUNS = 100_000
DEFAULT_CALL_DEADLINE_MS = 10_000.0


@dataclass
class RuntimeConfig:
    """Knobs of the runtime; every buffer and wait is bounded by one of these."""

    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    max_pending_per_run: int = DEFAULT_MAX_PENDING_PER_RUN
    retry_initial_ms: float = DEFAULT_RETRY_INITIAL_MS
    retry_max_ms: float = DEFAULT_RETRY_MAX_MS
    #: Attempts per event before it is skipped (counted as failed); None = retry forever.
    max_attempts: int | None = None
    gap_grace_ms: float = DEFAULT_GAP_GRACE_MS
    fill_interval_ms: float = DEFAULT_FILL_INTERVAL_MS
    checkpoint_interval_ms: float = DEFAULT_CHECKPOINT_INTERVAL_MS
    status_interval_ms: float = DEFAULT_STATUS_INTERVAL_MS
    #: Finished runs remembered for dedupe beyond this many are forgotten, oldest first.
    max_runs: int = DEFAULT_MAX_RUNS
    #: A backend call running longer than this is reported as hung (its run waits for it).
    call_deadline_ms: float = DEFAULT_CALL_DEADLINE_MS

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_pending_per_run < 1:
            raise ValueError("max_batch and max_pending_per_run must be at least 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1, or None to retry forever")

    def retry_delay_s(self, attempts: int, retry_after_s: float | None = None) -> float:
        """The pause before attempt ``attempts + 1``: capped exponential backoff.

        A backend's own hint (``retry_after_s``) lengthens it, never past the cap.
        """
        delay = min(self.retry_max_ms, self.retry_initial_ms * 2 ** min(attempts - 1, 30))
        delay /= 1000.0
        if retry_after_s is not None:
            delay = min(max(delay, retry_after_s), self.retry_max_ms / 1000.0)
        return delay

    def gives_up(self, attempts: int) -> bool:
        """True when an event failed ``attempts`` times and is to be skipped."""
        return self.max_attempts is not None and attempts >= self.max_attempts


@dataclass
class Counters:
    """What the runtime did; shown by ``rose status``."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    gaps: int = 0  # events reported missing and skipped
    filled: int = 0  # events fetched from the store to fill a gap
    retries: int = 0
    failed: int = 0  # events skipped after the retry policy gave up, or rejected
    invalid: int = 0  # events that do not decode or validate
    overflow: int = 0  # events dropped from a full run buffer (refetched later)
    store_changes: int = 0
    store_lost: int = 0  # events the store lost after this sink's position (re-read past)
    hung_calls: int = 0  # backend calls that outlived their deadline
