"""Gaps in a run's seqs: fetched again from the store, or reported and skipped.

When a run's next seq is missing, the events after it wait.  A source that
can fetch again (the broker's store) is asked for the run's events from that
seq, at most every ``fill_interval_ms``; a seq still missing after
``gap_grace_ms`` (at once when a bounded source ended, or when a source that
cannot fetch again filled the run's buffer) is reported and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bus.wire import StoredEvent
from sinks.runconfig import Counters, RuntimeConfig
from sinks.runstate import RunState
from sinks.sources import EventSource

# The runtime's parts log under its name: its lines are listed by that name for users.
log = logging.getLogger("sinks.runtime")

#: Gap reports kept for the status file.
GAP_REPORTS_KEPT = 100


class GapFiller:
    """Fills or reports the gaps of one runtime's runs; keeps the recent reports."""

    def __init__(self, name: str, source: EventSource, config: RuntimeConfig,
                 counters: Counters, accept: Callable[[StoredEvent], bool],
                 refetchable: bool) -> None:  # fmt: skip
        self.name = name
        self.source = source
        self.config = config
        self.counters = counters
        #: Buffers a fetched event unless it is a duplicate; True when it was new.
        self.accept = accept
        self.refetchable = refetchable
        self.reports: list[dict[str, Any]] = []

    def on_gap(self, run: RunState, now: float, *, draining: bool) -> bool:
        """next_seq is missing: fill it from the store, or report it; True on progress."""
        cfg = self.config
        if run.gap_since is None:
            run.gap_since = now
        if self.refetchable and now - run.last_fill >= cfg.fill_interval_ms / 1000.0:
            run.last_fill = now
            if self._fill(run):
                return True
        if not run.pending:
            return False
        if (
            draining
            or now - run.gap_since >= cfg.gap_grace_ms / 1000.0
            or (not self.refetchable and len(run.pending) >= cfg.max_pending_per_run)
        ):
            self._skip_to(run, min(run.pending))
            return True
        return False

    def _skip_to(self, run: RunState, first: int) -> None:
        missing = first - run.next_seq
        self.counters.gaps += missing
        log.warning(
            "%s: run %s: seq %d..%d missing and not in the store; skipping %d event(s)",
            self.name,
            run.name,
            run.next_seq,
            first - 1,
            missing,
        )
        self.reports.append({"run": run.name, "from": run.next_seq, "to": first - 1})
        del self.reports[:-GAP_REPORTS_KEPT]
        run.next_seq = first
        run.gap_since = None

    def _fill(self, run: RunState) -> bool:
        try:
            items = self.source.run_events(run.name, run.next_seq)
        except Exception as exc:
            log.warning("%s: cannot fetch run %s from the store: %s", self.name, run.name, exc)
            return False
        room = self.config.max_pending_per_run - len(run.pending)
        new = 0
        for item in items:
            if item.run != run.name or run.is_duplicate(item.seq):
                continue
            if room <= 0:
                break
            if self.accept(item):
                new += 1
                room -= 1
        if room > 0:
            run.behind_offset = None  # everything the store holds is buffered now
        self.counters.filled += new
        if new:
            log.debug("%s: run %s: %d event(s) fetched from the store", self.name, run.name, new)
        return run.next_seq in run.pending
