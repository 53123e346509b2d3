"""Log the first of a repeated problem in full and count the rest.

A daemon or a learner that hits the same failure ten thousand times must not
write ten thousand log lines, and must not hide it either: the first occurrence
of each key is logged (with its traceback when asked), later ones are counted,
and ``report()`` (or the owner, from ``counts``) says how many there were.  Like OpenTelemetry's duplicate
filter, one small object per owner, no global state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import Any


class RepeatLog:
    """Per-key counts of a repeated message; logs the first ``limit`` of each key."""

    def __init__(self, logger: logging.Logger, *, limit: int = 1) -> None:
        if limit < 1:
            raise ValueError(f"RepeatLog: limit must be >= 1, got {limit}")
        self.logger = logger
        self.limit = limit
        self.counts: dict[Hashable, int] = {}
        self._covered = 0  # occurrences already in the log: logged ones and reported totals
        self._reported_at = float("-inf")

    def __call__(
        self,
        key: Hashable,
        msg: str,
        *args: Any,
        level: int = logging.WARNING,
        exc_info: bool = False,
    ) -> bool:
        """Count one occurrence of ``key``; log it while under the limit. True when logged."""
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        if n > self.limit:
            return False
        self._covered += 1
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def count(self, key: Hashable) -> int:
        return self.counts.get(key, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(
        self,
        msg: str,
        *,
        every_s: float,
        now: float | None = None,
        final: bool = False,
        level: int = logging.WARNING,
    ) -> bool:
        """Log ``msg % (total, counts)`` when occurrences went unlogged since the last time.

        For a daemon's running summary: at most every ``every_s`` seconds, and
        always when ``final`` (at shutdown).  True when it logged.
        """
        total = self.total
        if total == self._covered:
            return False
        now = time.monotonic() if now is None else now
        if not final and now - self._reported_at < every_s:
            return False
        self._covered, self._reported_at = total, now
        self.logger.log(level, msg, total, dict(self.counts))
        return True
