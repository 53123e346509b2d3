"""An in-memory sink: the test double every runtime test drives.

It records what each run received, and can be told to fail (raise, or
return RETRY / REJECT) on chosen events a number of times, to exercise the
runtime's retry and isolation policy.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from sinks.base import ApplyResult, RunSink, Sink

FOREVER = -1


class InMemorySink(Sink):
    """Keeps every applied event per run; ``events[run]`` is the run's applied log."""

    name = "memory"

    def __init__(self, *, idempotent: bool = False) -> None:
        self.idempotent = idempotent
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.opened: dict[str, int] = defaultdict(int)
        self.closed: dict[str, int] = defaultdict(int)
        self.batches: list[tuple[str, int]] = []
        self.attempts: dict[tuple[str, int], int] = defaultdict(int)
        self._faults: dict[tuple[str, int], list[Any]] = {}
        self._lock = threading.Lock()
        self.shut_down = False

    def fail(self, run: str, seq: int, times: int = 1, *, how: str = "raise") -> None:
        """Make the event ``(run, seq)`` fail ``times`` times (FOREVER: always).

        ``how`` is ``raise`` (an exception), ``retry`` (a RETRY result) or
        ``reject`` (a REJECT result).
        """
        self._faults[(run, seq)] = [times, how]

    def seqs(self, run: str) -> list[int]:
        return [e["seq"] for e in self.events.get(run, [])]

    def open_run(self, run: str) -> RunSink:
        with self._lock:
            self.opened[run] += 1
        return _MemoryRun(self, run)

    def shutdown(self) -> None:
        self.shut_down = True

    def _fault(self, run: str, seq: int) -> str | None:
        fault = self._faults.get((run, seq))
        if fault is None or fault[0] == 0:
            return None
        if fault[0] > 0:
            fault[0] -= 1
        return fault[1]


class _MemoryRun(RunSink):
    def __init__(self, sink: InMemorySink, run: str) -> None:
        self.sink = sink
        self.run = run

    def resume_seq(self) -> int | None:
        if not self.sink.idempotent:
            return None
        applied = self.sink.events.get(self.run)
        return applied[-1]["seq"] + 1 if applied else None

    def apply(
        self, events: list[dict[str, Any]], lines: list[str | None] | None = None
    ) -> ApplyResult:
        self.sink.batches.append((self.run, len(events)))
        out = self.sink.events[self.run]
        for i, event in enumerate(events):
            self.sink.attempts[(self.run, event["seq"])] += 1
            how = self.sink._fault(self.run, event["seq"])
            if how == "raise":
                del out[len(out) - i :]  # all or nothing, like a failed transaction
                raise RuntimeError(f"injected failure at {self.run}#{event['seq']}")
            if how == "retry":
                return ApplyResult.retry(i, "injected retry", retry_after_s=None)
            if how == "reject":
                return ApplyResult.reject(i, "injected reject")
            out.append(event)
        return ApplyResult.ok(len(events))

    def close(self) -> None:
        self.sink.closed[self.run] += 1
