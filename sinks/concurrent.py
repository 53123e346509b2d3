"""Applying independent runs at once: the runtime with N backend calls in flight.

A tracking server answers each call after a round trip and its own
database work, so one call at a time leaves it mostly idle.  Runs never
share state, so :class:`ConcurrentRuntime` starts the next batch of up to N
ready runs at once, each on a worker thread of its own, exactly as the
runtime sets a slow call aside: the run waits for its call, and when the
call answers, the runtime takes its result as it takes any other: ordering,
retries, isolation of a refused event, gaps, checkpoints and the deadline
of a call that hangs are :class:`~sinks.runtime.SinkRuntime`'s, unchanged.
One run never has two calls in flight, so a run's events never reorder.

A sink asks for workers with a ``workers`` attribute (``--workers N``);
:func:`make_runtime` picks the runtime.  Even with one worker, it pulls
several batches per round (:data:`MIN_PULL_BATCHES`), so that in a backlog of
many interleaved runs each run's calls are still full.
"""

from __future__ import annotations

import logging
from typing import Any

from sinks.base import Sink
from sinks.calls import CALL_WAIT_S, Call, apply_args
from sinks.runtime import SinkRuntime
from sinks.sources import EventSource

log = logging.getLogger(__name__)

#: Worker threads allowed; more only adds contention on the tracking server.
MAX_WORKERS = 64
#: Batches pulled per round at least: in a backlog of interleaved runs each run then
#: gets a full batch per round, so calls stay full instead of one per few events.
MIN_PULL_BATCHES = 8


class ConcurrentRuntime(SinkRuntime):
    """:class:`SinkRuntime` that keeps up to ``workers`` runs' calls in flight at once."""

    def __init__(self, sink: Sink, source: EventSource, *, workers: int, **kw: Any) -> None:
        super().__init__(sink, source, **kw)
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be between 1 and {MAX_WORKERS}")
        self.workers = workers
        # Enough events per round for every worker to get a full batch of its run.
        self.pull_limit = self.config.max_batch * max(workers, MIN_PULL_BATCHES)

    def _pump(self) -> None:
        if self.workers > 1:
            self._start_calls()
        super()._pump()

    def _start_calls(self) -> None:
        """Start the next batch of up to ``workers`` ready runs, then wait boundedly.

        Each run is set aside with its call; ``_advance`` takes the result, or
        keeps waiting (and reports a hung call) as for any set-aside call.
        """
        now = self._clock()
        in_flight = sum(1 for r in self.runs if r.call is not None)
        calls: list[Call] = []
        for name in list(self.runs.ready):
            if in_flight + len(calls) >= self.workers:
                break
            run = self.runs.by_name.get(name)
            if run is None or run.call is not None or run.backend is None or run.retry_at > now:
                continue
            batch = run.next_batch(self.config.max_batch)
            if not batch:
                continue
            run.gap_since = None
            call = Call(run.backend.apply, apply_args(batch), "apply", batch, now)
            run.call, run.worker = call, self._calls.start_own(call)
            calls.append(call)
        deadline = now + min(CALL_WAIT_S, self.config.call_deadline_ms / 1000.0)
        for call in calls:
            call.done.wait(max(0.0, deadline - self._clock()))


def make_runtime(sink: Sink, source: EventSource, **kw: Any) -> SinkRuntime:
    """The runtime for ``sink``: this module's when it has a ``workers`` attribute."""
    workers = getattr(sink, "workers", None)
    if workers is None:
        return SinkRuntime(sink, source, **kw)
    return ConcurrentRuntime(sink, source, workers=int(workers), **kw)
