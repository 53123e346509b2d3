"""What a backend call's answer means for its run: go on, retry later, or skip.

A batch applied in full moves the run on.  A failure is retried after the
backoff of :meth:`~sinks.runconfig.RuntimeConfig.retry_delay_s`; the run's
next seq never moves past an unapplied event meanwhile.  A batch that raised
is gone through one event at a time, to find the event that raised.  An event
the backend rejects, or one that failed ``max_attempts`` times, is skipped:
counted as failed and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bus.wire import StoredEvent
from sinks.base import ApplyResult, Outcome
from sinks.runconfig import Counters, RuntimeConfig
from sinks.runstate import RunState

# The runtime's parts log under its name: its lines are listed by that name for users.
log = logging.getLogger("sinks.runtime")


class Retries:
    """Accounts for the answers of one runtime's backend calls."""

    def __init__(self, name: str, config: RuntimeConfig, counters: Counters,
                 clock: Callable[[], float], ready: set[str],
                 applied: Callable[[RunState, list[StoredEvent]], None],
                 moved: Callable[[], None],
                 finished: Callable[[RunState], None]) -> None:  # fmt: skip
        self.name = name
        self.config = config
        self.counters = counters
        self._clock = clock
        #: Runs the runtime looks at again; a retried run is one of them.
        self._ready = ready
        #: Called with the events a backend applied, in order.
        self._applied = applied
        #: Called when a run moved past an event without applying it.
        self._moved = moved
        #: Called when a stopped run applied its last event (its backend closes).
        self._finished = finished

    def account(self, run: RunState, batch: list[StoredEvent], result: ApplyResult,
                raised: BaseException | None) -> bool:  # fmt: skip
        """Account for a batch's result; True when the run may go on at once."""
        if raised is not None:
            if not isinstance(raised, Exception):
                raise raised
            if not run.attempts and len(batch) == 1:
                log.warning("%s: run %s: the sink raised on seq %d", self.name, run.name,
                            batch[0].seq, exc_info=raised)  # fmt: skip
            if len(batch) > 1:
                # Which event raised is unknown: go one by one through this batch.
                run.isolate_until = batch[-1].seq
                return True
        done = max(0, min(result.applied, len(batch)))
        if done:
            self._applied(run, batch[:done])
        if result.outcome is Outcome.SUCCESS and done == len(batch):
            if run.attempts:
                log.info("%s: run %s recovered after %d retr%s", self.name, run.name,
                         run.attempts, "y" if run.attempts == 1 else "ies")  # fmt: skip
                run.attempts, run.last_error = 0, ""
            if run.done and not run.pending:
                self._finished(run)
                return False
            return True
        if result.outcome is Outcome.REJECT:
            self.skip(run, f"rejected by the sink: {result.error}")
            return True
        error = result.error or "the sink applied only part of a batch"
        if not self.schedule(run, error, result.retry_after_s):
            self.skip(run, f"gave up after {run.attempts} attempt(s): {error}")
            run.attempts, run.retry_at = 0, 0.0
            return True
        return False

    def schedule(self, run: RunState, error: str, retry_after_s: float | None,
                 exc: BaseException | None = None) -> bool:  # fmt: skip
        """Back off before the next attempt; False when the retry policy is exhausted."""
        run.attempts += 1
        self.counters.retries += 1
        delay = self.config.retry_delay_s(run.attempts, retry_after_s)
        run.retry_at = self._clock() + delay
        self._ready.add(run.name)
        if self.config.gives_up(run.attempts):
            run.last_error = error
            return False
        if run.attempts == 1 or error != run.last_error:
            log.warning("%s: run %s failed at seq %d (%s); retrying in %.2fs", self.name,
                        run.name, run.next_seq, error, delay, exc_info=exc)  # fmt: skip
        else:
            log.debug("%s: run %s attempt %d failed: %s", self.name, run.name, run.attempts, error)
        run.last_error = error
        return True

    def skip(self, run: RunState, why: str) -> None:
        """Give up on the event at next_seq: count it, log it, move on."""
        self.counters.failed += 1
        log.error("%s: run %s: skipping seq %d, %s", self.name, run.name, run.next_seq, why)
        run.skip_next(why)
        self._moved()
