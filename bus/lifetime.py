"""Trackers still open at interpreter exit are closed, with one shared deadline.

A tracker created inline and dropped by the learner must still be closed (and
warn about what it could not deliver) when the interpreter exits; many trackers
with the broker down must not add up their waits.
"""

from __future__ import annotations

import atexit
import threading
import time
from typing import Protocol


class _Closable(Protocol):
    flush_timeout_ms: int

    def close(self, timeout_ms: int | None = None) -> None: ...


#: Every open tracker, strongly held.
_live: set[_Closable] = set()
_live_lock = threading.Lock()


def close_at_exit(tracker: _Closable) -> None:
    with _live_lock:
        _live.add(tracker)


def closed(tracker: _Closable) -> None:
    with _live_lock:
        _live.discard(tracker)


@atexit.register
def _close_all_at_exit() -> None:
    with _live_lock:
        trackers = list(_live)
    if not trackers:
        return
    budget_s = max(t.flush_timeout_ms for t in trackers) / 1000
    deadline = time.monotonic() + budget_s
    for tracker in trackers:
        left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
        tracker.close(timeout_ms=left_ms)
