"""The runs of the sink runtime: each run's next seq and its ordering buffer.

Events of a run are applied in seq order, each once: an event below
``next_seq`` or already buffered is a duplicate; one ahead of ``next_seq``
waits in ``pending`` until the events before it came (or were reported
missing).  Each buffer is bounded: past ``max_pending_per_run`` an event is
dropped and read again later from the store, or, from a source that cannot
fetch again, reading stops until the run drains.  A run also remembers what
``rose status`` shows of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from bus.wire import StoredEvent
from rose.events.identity import check_run_id
from rose.events.schema import EventError
from rose.logonce import RepeatLog
from sinks.base import RunSink
from sinks.calls import Call, Worker
from sinks.runconfig import Counters, RuntimeConfig

# The runtime's parts log under its name: its lines are listed by that name for users.
log = logging.getLogger("sinks.runtime")

#: Invalid events logged one by one; the rest are only counted.
MAX_INVALID_LOGGED = 20


class RunState:
    """Per-run bookkeeping: position, buffer, backend, retries and what status shows."""

    __slots__ = (
        "name",
        "next_seq",
        "pending",
        "backend",
        "attempts",
        "retry_at",
        "last_error",
        "behind_offset",
        "gap_since",
        "last_fill",
        "done",
        "applied",
        "last_kind",
        "iteration",
        "metric_name",
        "metric_value",
        "last_ts",
        "rate",
        "rate_mark",
        "isolate_until",
        "call",
        "worker",
    )

    def __init__(self, name: str, next_seq: int) -> None:
        self.name = name
        self.next_seq = next_seq
        self.pending: dict[int, StoredEvent] = {}
        self.backend: RunSink | None = None
        self.attempts = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.behind_offset: int | None = None  # lowest offset dropped from a full buffer
        self.gap_since: float | None = None
        self.last_fill = float("-inf")
        self.done = False
        self.applied = 0
        self.last_kind = ""
        self.iteration: int | None = None
        self.metric_name: str | None = None
        self.metric_value: Any = None
        self.last_ts: float | None = None
        self.rate = 0.0
        self.rate_mark = 0
        #: After a batch raised, events up to this seq go one by one to find the culprit.
        self.isolate_until = -1
        #: A backend call that outlived CALL_WAIT_S, and the worker left to it.
        self.call: Call | None = None
        self.worker: Worker | None = None

    # ------------------------------------------------------------ the buffer

    def is_duplicate(self, seq: int) -> bool:
        return seq < self.next_seq or seq in self.pending

    @property
    def has_work(self) -> bool:
        """Events buffered, or dropped from a full buffer and still to be read again."""
        return bool(self.pending) or self.behind_offset is not None

    def next_batch(self, max_batch: int) -> list[StoredEvent]:
        """The run's next contiguous events, one at a time while isolating a raise."""
        if self.next_seq <= self.isolate_until:
            max_batch = 1
        batch: list[StoredEvent] = []
        seq = self.next_seq
        pending = self.pending
        while len(batch) < max_batch:
            item = pending.get(seq)
            if item is None:
                break
            batch.append(item)
            seq += 1
        return batch

    def drop_below(self, seq: int) -> int:
        """The backend already holds the seqs below ``seq``: skip them; how many were buffered."""
        self.next_seq = seq
        old = [s for s in self.pending if s < seq]
        for s in old:
            del self.pending[s]
        return len(old)

    def took(self, items: list[StoredEvent]) -> None:
        """``items`` (the next contiguous events) were applied: move past them."""
        for item in items:
            del self.pending[item.seq]
        self.next_seq = items[-1].seq + 1
        self.applied += len(items)
        last = items[-1].event
        assert last is not None
        self.last_kind = last["kind"]
        self.last_ts = last["ts"]
        for item in reversed(items):
            ev = item.event
            if ev is not None and ev["kind"] == "iteration":
                body = ev["body"]
                self.iteration = body.get("iteration")
                self.metric_name = body.get("metric_name")
                self.metric_value = body.get("metric_value")
                break
        if last["kind"] == "stop":
            self.done = True

    def skip_next(self, why: str) -> None:
        """Give up on the event at next_seq."""
        self.pending.pop(self.next_seq, None)
        self.next_seq += 1
        self.last_error = why

    # ------------------------------------------------------------ offsets

    def low_offset(self, low: int) -> int:
        """``low``, or the lowest offset this run still needs when that is lower."""
        if self.pending:
            low = min(low, min(item.offset for item in self.pending.values()))
        if self.behind_offset is not None:
            low = min(low, self.behind_offset)
        return low

    def rewind(self, offset: int) -> None:
        """The store hands out offsets from ``offset`` again: none of ours lies past it."""
        for item in self.pending.values():
            item.offset = min(item.offset, offset)
        if self.behind_offset is not None:
            self.behind_offset = min(self.behind_offset, offset)

    # ------------------------------------------------------------ status

    def status_row(self, now: float) -> dict[str, Any]:
        """This run as ``rose status`` shows it."""
        return {
            "run": self.name,
            "next_seq": self.next_seq,
            "pending": len(self.pending),
            "kind": self.last_kind,
            "iteration": self.iteration,
            "metric_name": self.metric_name,
            "metric_value": _jsonable(self.metric_value),
            "ts": self.last_ts,
            "applied": self.applied,
            "events_per_s": round(self.rate, 1),
            "retrying": bool(self.attempts),
            "last_error": self.last_error[:200],
            "done": self.done,
            "retry_in_s": max(0.0, self.retry_at - now) if self.attempts else 0.0,
        }

    def measure_rate(self, dt: float) -> None:
        """Events per second applied since the last measure, ``dt`` seconds ago."""
        self.rate = (self.applied - self.rate_mark) / dt if dt > 0 else 0.0
        self.rate_mark = self.applied



class Runs:
    """The runs of one runtime by name, and the names of those with work to do."""

    def __init__(self, name: str, config: RuntimeConfig, counters: Counters, *,
                 refetchable: bool, first_seq: Callable[[str], int],
                 opened: Callable[[RunState], object]) -> None:  # fmt: skip
        self.name = name
        self.config = config
        self.counters = counters
        self.refetchable = refetchable
        #: The next seq of a run seen for the first time (from the checkpoint).
        self._first_seq = first_seq
        #: Called with a new run, to open its backend.
        self._opened = opened
        self.by_name: dict[str, RunState] = {}
        #: Runs with events to apply, a retry or a call to wait for.
        self.ready: set[str] = set()
        #: A source that cannot fetch again filled a run's buffer: stop reading.
        self.full = False
        self._invalid_log = RepeatLog(log, limit=MAX_INVALID_LOGGED)

    def __iter__(self) -> Iterator[RunState]:
        return iter(self.by_name.values())

    def accept(self, item: StoredEvent, *, fill: bool = False) -> bool:
        """Buffer ``item`` unless it is a duplicate; True when it was new."""
        counters = self.counters
        if not fill:
            counters.received += 1
        run = self.by_name.get(item.run) or self._new(item.run)
        if run is None:
            return False
        if run.is_duplicate(item.seq):
            if not fill:
                counters.duplicates += 1
            return False
        if len(run.pending) >= self.config.max_pending_per_run:
            if not self.refetchable:
                self.full = True
            else:
                counters.overflow += 1
                if run.behind_offset is None or item.offset < run.behind_offset:
                    run.behind_offset = item.offset
                self.ready.add(run.name)
                return False
        try:
            item.load()
        except EventError as exc:
            # Treated as never received: a valid copy may still come (or fill the gap).
            if not fill:
                counters.invalid += 1
                self._log_invalid("run %s seq %d is invalid: %s", run.name, item.seq, exc)
            return False
        run.pending[item.seq] = item
        if run.done:
            run.done = False  # an event after stop (unusual): the run reopens
        self.ready.add(run.name)
        return True

    def _new(self, name: str) -> RunState | None:
        # A source may be hand-made: a run id becomes a backend's name, so it is checked
        # here, once per run, before its backend opens.
        try:
            check_run_id(name)
        except EventError as exc:
            self.counters.invalid += 1
            self._log_invalid("rejecting an event: %s", exc)
            return None
        run = RunState(name, self._first_seq(name))
        self.by_name[name] = run
        self._opened(run)
        if len(self.by_name) > self.config.max_runs:
            self._forget_finished()
        return run

    def _log_invalid(self, msg: str, *args: Any) -> None:
        """The first MAX_INVALID_LOGGED invalid events are logged; the rest are counted."""
        if self._invalid_log("invalid", "%s: " + msg, self.name, *args):
            if self._invalid_log.count("invalid") == MAX_INVALID_LOGGED:
                log.warning("%s: further invalid events are only counted", self.name)
        else:
            log.debug("%s: " + msg, self.name, *args)

    def _forget_finished(self) -> None:
        excess = len(self.by_name) - self.config.max_runs
        for name in [n for n, r in self.by_name.items() if r.done and not r.pending][:excess]:
            del self.by_name[name]

    def any_full(self) -> bool:
        return any(len(r.pending) >= self.config.max_pending_per_run for r in self)

    def rewind(self, offset: int) -> None:
        """The store hands out offsets from ``offset`` again."""
        for run in self:
            run.rewind(offset)

    def new_store(self) -> None:
        """Offsets restart in a new store: the old ones mean nothing there."""
        for run in self:
            for item in run.pending.values():
                item.offset = 0
            run.behind_offset = 0 if run.behind_offset is not None else None


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else str(x)
    return str(x)
