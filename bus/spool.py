"""The tracker's background event-log writer: the ``spool=`` log and the fallback log.

The learner's thread only appends to a deque; turning an event into its JSON
line, writing and the batched fsync happen on this writer's own thread, so a
slow disk never reaches the learner.

An event the tracker built itself is written from that very dict (it is not
changed after the callback: the body is a copy made by ``to_plain``), without a
msgpack round trip.  The one part of it that may still be the learner's own
object is a numpy array, which the learner may change in place after the
callback returned; an event holding an array, and any event given without its
dict (``BusTracker.emit`` from a caller, the fallback log's unacknowledged
events), is written from the bytes that were sent, exactly as they went out.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from rose.eventlog import EventLogWriter
from rose.events.jsonl import to_json_line
from rose.events.msgpack_codec import decode, decode_unbounded
from rose.logonce import RepeatLog

# The tracker's messages keep the one logger name users filter on and the docs show.
log = logging.getLogger("bus.tracker")

_CONTAINERS = frozenset({dict, list, np.ndarray})


def holds_array(value: Any) -> bool:
    """True when a plain value holds a numpy array anywhere (type checks run in C)."""
    if type(value) is dict:
        value = value.values()
    types = set(map(type, value))
    if np.ndarray in types:
        return True
    if dict in types or list in types:
        return any(type(v) in _CONTAINERS and holds_array(v) for v in value)
    return False


def load_sent(payload: bytes, whole: bool = False) -> dict[str, Any]:
    """The event as it was sent; ``whole``: over the decoders' bounds (kept whole)."""
    return decode_unbounded(payload) if whole else decode(payload)


class Spooler:
    """Appends events to a JSONL event log (a file, or one file per run) from a thread.

    ``settle`` waits until everything put is written and fsynced; ``close``
    drains, fsyncs and joins with a deadline.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sync_interval_s: float,
        max_queue: int | None,
        *,
        per_run: bool | None = None,
    ):
        target = Path(path).expanduser()
        self.path = target
        # a directory: an existing one, or any path ending in "/" (as FileTracker reads it)
        if per_run is None:
            per_run = target.is_dir() or str(path).endswith(("/", os.sep))
        self._per_run = per_run
        if self._per_run:
            target.mkdir(parents=True, exist_ok=True)  # a bad path fails here, at construction
        self._writers: dict[str | None, EventLogWriter] = {}
        if not self._per_run:  # open now, so a bad path fails at construction, not later
            self._writers[None] = EventLogWriter(target)
        self._sync_interval_s = sync_interval_s
        self._max_queue = max_queue
        self._queue: collections.deque[tuple[bytes, dict[str, Any] | None, str]] = (
            collections.deque()
        )
        self._wake = threading.Event()
        self._settled = threading.Event()
        self._settle = False
        self._stopping = False
        self._problems = RepeatLog(log)
        self.spooled = 0
        self.failed = 0
        #: Files written, by run (the log itself when not per run).
        self.files: dict[str, Path] = {}
        self._thread = threading.Thread(target=self._run, name="rose-bus-spool", daemon=True)
        self._thread.start()

    def put(self, payload: bytes, event: dict[str, Any] | None = None, suffix: str = "") -> bool:
        """Queue one sent event (its bytes, and its dict when the tracker built it).

        ``suffix`` names a side file (``.oversized``: larger than decoders accept).
        """
        if self._max_queue is not None and len(self._queue) >= self._max_queue:
            self.failed += 1
            self._problems(
                "behind",
                "spool %s is %d events behind (slow disk?): further events are not "
                "spooled until it catches up",
                self.path,
                self._max_queue,
            )
            return False
        self._queue.append((payload, event, suffix))
        return True

    def _writer(self, run: str, suffix: str) -> EventLogWriter:
        key = run + suffix if self._per_run else None
        writer = self._writers.get(key)
        if writer is None:
            path = self.path / f"{run}{suffix}.jsonl"
            writer = self._writers[key] = EventLogWriter(path)
        self.files.setdefault(run + suffix, writer.path)
        return writer

    def _write(self, payload: bytes, event: dict[str, Any] | None, suffix: str) -> None:
        if event is None or holds_array(event):
            event = load_sent(payload, whole=bool(suffix))
        self._writer(event["run"], suffix).append_line(to_json_line(event))

    def _run(self) -> None:
        last_sync = time.monotonic()
        dirty = False
        while True:
            self._wake.wait(0.05)
            self._wake.clear()
            stopping, settle = self._stopping, self._settle
            while self._queue:
                payload, event, suffix = self._queue.popleft()
                try:
                    self._write(payload, event, suffix)
                    self.spooled += 1
                    dirty = True
                except Exception:
                    self.failed += 1
                    self._problems(
                        "write",
                        "writing to the event log %s failed; counting further failures",
                        self.path,
                        level=logging.ERROR,
                        exc_info=True,
                    )
            now = time.monotonic()
            if dirty and (stopping or settle or now - last_sync >= self._sync_interval_s):
                self._sync()
                dirty, last_sync = False, now
            if settle and not self._queue:
                self._settle = False
                self._settled.set()
            if stopping and not self._queue:
                break
        for writer in self._writers.values():
            try:
                writer.close()
            except OSError:
                log.exception("closing the event log %s failed", writer.path)

    def _sync(self) -> None:
        for writer in list(self._writers.values()):
            try:
                writer.sync()
            except OSError:
                log.exception("fsync of the event log %s failed", writer.path)

    def settle(self, timeout_s: float) -> bool:
        """Wait until everything put so far is written and fsynced."""
        self._settled.clear()
        self._settle = True
        self._wake.set()
        return self._settled.wait(timeout_s)

    def close(self, timeout_s: float) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning(
                "event log %s: writer did not finish within %.1fs; %d event(s) may be missing",
                self.path,
                timeout_s,
                len(self._queue),
            )
