"""Where a sink's events come from: the broker's store, event log files, memory.

Every source hands the runtime :class:`~bus.wire.StoredEvent` s: a position
(``offset``), the routing key ``(run, seq)``, and the event as msgpack bytes,
a decoded map or a JSON line.  Decoding is lazy, so duplicates cost no decode.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bus.wire import StoredEvent
from rose.eventlog import EventLogReader
from rose.events.msgpack_codec import encode
from rose.events.schema import EventError
from rose.events.validation import validate

log = logging.getLogger(__name__)


class SourceChanged(Exception):
    """The source now serves a different store: offsets restart, (run, seq) still dedupe."""


@dataclass(slots=True)
class Rewind:
    """Yielded by a source instead of an item: its store lost events, offsets go back.

    The events at and after ``offset`` follow (those already delivered are
    skipped by (run, seq)); ``lost`` events after offset ``after`` are gone
    from the store, which is now at ``generation``.
    """

    offset: int
    lost: int
    after: int
    generation: int | None


class EventSource(Protocol):
    """What the runtime needs from where events come from.

    ``refetchable`` (an attribute, default True) says whether ``run_events``
    can fetch events again; when False the runtime never drops an event from
    a full buffer and instead stops reading until it drains.
    """

    def store_id(self) -> str | None:
        """Identity of the underlying store (None for sources without one)."""

    def subscribe(self, from_offset: int) -> Iterator[StoredEvent | None]:
        """Every event at offset >= from_offset once, in offset order; None on idle.

        Ends only for bounded sources (files); a live source yields None while
        idle so the caller can check for shutdown.
        """

    def run_events(self, run: str, from_seq: int) -> list[StoredEvent]:
        """The stored events of ``run`` from ``from_seq`` on, to fill a gap ([] if unknown)."""

    def head_offset(self) -> int | None:
        """The newest stored offset (for lag), or None when unknown."""

    def close(self) -> None: ...


# ------------------------------------------------------------------ memory


class MemoryStore:
    """An in-memory store with the broker's semantics: a test double for sources.

    ``append`` dedupes by ``(run, seq)`` and assigns offsets; ``subscribe``
    serves catch-up then live.  ``append(..., live=False)`` stores an event
    without delivering it on subscriptions, to simulate a live stream that
    lost it (a gap the runtime must fill from the store).
    """

    def __init__(self, *, store_id: str = "memory-store", idle_s: float = 0.05) -> None:
        self._id = store_id
        self._idle_s = idle_s
        self._items: list[tuple[StoredEvent, bool]] = []
        self._keys: set[tuple[str, int]] = set()
        self._cond = threading.Condition()
        self.fill_requests = 0

    def append(self, event: dict[str, Any], *, live: bool = True) -> bool:
        key = (event["run"], event["seq"])
        with self._cond:
            if key in self._keys:
                return False
            self._keys.add(key)
            item = StoredEvent(len(self._items), *key, event["kind"], encode(event))
            self._items.append((item, live))
            self._cond.notify_all()
        return True

    def append_raw(self, run: str, seq: int, payload: bytes) -> None:
        """Store bytes as they are (garbage included), like a broker that never decodes."""
        with self._cond:
            self._items.append((StoredEvent(len(self._items), run, seq, payload=payload), True))
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)

    # EventSource
    def store_id(self) -> str | None:
        return self._id

    def subscribe(self, from_offset: int) -> Iterator[StoredEvent | None]:
        pos = max(0, from_offset)
        while True:
            with self._cond:
                if pos >= len(self._items):
                    self._cond.wait(self._idle_s)
                batch = self._items[pos:]
            if not batch:
                yield None
                continue
            for item, live in batch:
                pos += 1
                if live:
                    yield item.copy()

    def run_events(self, run: str, from_seq: int) -> list[StoredEvent]:
        self.fill_requests += 1
        with self._cond:
            found = [i for i, _ in self._items if i.run == run and i.seq >= from_seq]
        return [i.copy() for i in sorted(found, key=lambda i: i.seq)]

    def head_offset(self) -> int | None:
        return len(self._items) - 1 if self._items else None

    def close(self) -> None:
        pass


class BoundedSource:
    """What every source that ends after its last event shares.

    No store behind it (no id, no head), nothing to fetch again: the runtime
    never drops one of its events from a full buffer, it stops reading instead.
    """

    refetchable = False

    def store_id(self) -> str | None:
        return None

    def run_events(self, run: str, from_seq: int) -> list[StoredEvent]:
        return []

    def head_offset(self) -> int | None:
        return None

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ log files


class LogSource(BoundedSource):
    """Events of JSONL logs (file-sink output, FileTracker logs, spools), file by file.

    A bounded source: ``subscribe`` ends after the last line.  Torn last
    lines are skipped; bad lines are counted in ``bad_lines`` and logged once
    per file.  ``on_bytes`` reports progress (bytes read) for progress bars.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.on_bytes = on_bytes
        self.bad_lines = 0

    def subscribe(self, from_offset: int = 0) -> Iterator[StoredEvent | None]:
        offset = 0
        for path in self.paths:
            reader = EventLogReader(path, on_bytes=self.on_bytes)
            try:
                for line, event in reader:
                    if offset >= from_offset:
                        yield StoredEvent(
                            offset, event["run"], event["seq"], event["kind"], event=event,
                            line=line,
                        )  # fmt: skip
                    offset += 1
            finally:
                self.bad_lines += reader.bad_lines



class ListSource(BoundedSource):
    """A bounded source over events already in memory (tests, embedded replay)."""

    def __init__(self, events: Iterable[dict[str, Any]]) -> None:
        self._events = list(events)

    def subscribe(self, from_offset: int = 0) -> Iterator[StoredEvent | None]:
        for i, ev in enumerate(self._events[from_offset:], start=from_offset):
            try:
                ev = validate(ev)
            except EventError as exc:
                log.warning("skipping invalid event %d: %s", i, exc)
                continue
            yield StoredEvent(i, ev["run"], ev["seq"], ev["kind"], event=ev)
