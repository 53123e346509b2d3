"""Applying independent runs at once: the runtime with N worker threads.

A tracking server answers each call after a round trip and its own
database work, so one sink thread leaves it mostly idle.  Runs never share
state, so :class:`ConcurrentRuntime` hands the next batch of up to N ready
runs to N threads at once and then takes their results one by one on the
runtime's own thread, exactly as :class:`~sinks.runtime.SinkRuntime` would
have taken them from a call of its own: ordering, retries, isolation of a
refused event, gaps and checkpoints are the runtime's, unchanged.  One run
is never in two threads, so a run's events never reorder; a result that no
longer matches the batch the runtime asks for (it cannot, short of a bug)
is dropped and the batch applied again, which an idempotent sink absorbs.

A sink asks for workers with a ``workers`` attribute (``--workers N``);
:func:`make_runtime` picks the runtime.  Even with one worker, it pulls
several batches per round (:data:`MIN_PULL_BATCHES`), so that in a backlog of
many interleaved runs each run's calls are still full.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sinks.base import ApplyResult, Sink
from sinks.runtime import SinkRuntime, _Run
from sinks.sources import EventSource, Item

log = logging.getLogger(__name__)

#: Worker threads allowed; more only adds contention on the tracking server.
MAX_WORKERS = 64
#: Batches pulled per round at least: in a backlog of interleaved runs each run then
#: gets a full batch per round, so calls stay full instead of one per few events.
MIN_PULL_BATCHES = 8


class ConcurrentRuntime(SinkRuntime):
    """:class:`SinkRuntime` whose ready runs are applied by ``workers`` threads at once."""

    def __init__(self, sink: Sink, source: EventSource, *, workers: int, **kw: Any) -> None:
        super().__init__(sink, source, **kw)
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be between 1 and {MAX_WORKERS}")
        self.workers = workers
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix=f"{self.name}-worker")
            if workers > 1
            else None
        )
        self._done: dict[str, tuple[int, int, tuple[ApplyResult, bool]]] = {}
        self._pull_limit = self.config.max_batch * max(workers, MIN_PULL_BATCHES)

    def _pull(self, stream: Any) -> bool:
        # Enough events per round for every worker to get a full batch of its run.
        max_batch = self.config.max_batch
        self.config.max_batch = self._pull_limit
        try:
            return super()._pull(stream)
        finally:
            self.config.max_batch = max_batch

    def _pump(self) -> None:
        jobs = self._ready_batches() if self._pool is not None else []
        if len(jobs) > 1 and self._pool is not None:
            futures = [
                (run, batch, self._pool.submit(SinkRuntime._apply, self, run, batch))
                for run, batch in jobs
            ]
            for run, batch, future in futures:
                self._done[run.name] = (batch[0].seq, len(batch), future.result())
        try:
            super()._pump()
        finally:
            self._done.clear()

    def _ready_batches(self) -> list[tuple[_Run, list[Item]]]:
        """The batch ``_advance`` will ask for first, for each ready run that can go now."""
        now = self._clock()
        jobs = []
        for name in self._ready:
            run = self._runs.get(name)
            if run is None or run.backend is None or run.retry_at > now:
                continue
            limit = 1 if run.next_seq <= run.isolate_until else self.config.max_batch
            batch: list[Item] = []
            seq = run.next_seq
            while len(batch) < limit and (item := run.pending.get(seq)) is not None:
                batch.append(item)
                seq += 1
            if batch:
                jobs.append((run, batch))
        return jobs

    def _apply(self, run: _Run, batch: list[Item]) -> tuple[ApplyResult, bool]:
        done = self._done.pop(run.name, None)
        if done is not None:
            first, n, result = done
            if first == batch[0].seq and n == len(batch):
                return result
            log.debug("%s: run %s: a worker's result did not match; applying again", self.name, run.name)
        return super()._apply(run, batch)

    def _shutdown(self) -> None:
        try:
            super()._shutdown()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def make_runtime(sink: Sink, source: EventSource, **kw: Any) -> SinkRuntime:
    """The runtime for ``sink``: this module's when it has a ``workers`` attribute."""
    workers = getattr(sink, "workers", None)
    if workers is None:
        return SinkRuntime(sink, source, **kw)
    return ConcurrentRuntime(sink, source, workers=int(workers), **kw)
