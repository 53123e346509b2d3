"""The sink runtime, written once and shared by every sink.

It pulls events from a source (the broker's store: catch-up from the
checkpointed offset, then live; or log files for replay), and for every run
applies each ``(run, seq)`` exactly once and in seq order through that run's
own :class:`~sinks.base.RunSink`:

* duplicates (seq already applied or already buffered) are dropped;
* out-of-order events wait in a bounded per-run buffer; a missing seq is
  fetched from the store, and one the store does not hold after a grace
  period is reported as a gap and skipped (counted, logged, in the status);
* a failing backend is retried with capped exponential backoff; the run's
  next seq (and the checkpointed offset) never moves past an unapplied
  event, and other runs carry on meanwhile;
* every backend call (open, apply) has a deadline: it runs on a worker
  thread, and a call still running after a moment is set aside with its run
  (the worker is abandoned to it and replaced) so the other runs go on; past
  ``call_deadline_ms`` it is reported as hung.  The run waits for that call's
  answer and carries on from it, so each kind keeps its guarantee;
* the checkpoint (store id, generation, resume offset, next seq per run) and
  a status file are replaced atomically; a store that lost events makes the
  source rewind (:class:`~sinks.sources.Rewind`): the loss is counted and
  reported, events already applied are skipped by (run, seq); ``stop()``
  (SIGTERM/SIGINT in the CLI) finishes the batch in hand, flushes,
  checkpoints and returns.

The loop runs on the caller's thread (backend calls on workers, one call per
run at a time); ``stop()`` may come from any thread.  This module is that
loop; its parts are in modules named for their jobs: the knobs, backoff and
counters (:mod:`sinks.runconfig`), the runs and their ordering buffers
(:mod:`sinks.runstate`), backend calls and their deadline (:mod:`sinks.calls`),
what a call's answer means: go on, retry, skip (:mod:`sinks.retry`), gaps
(:mod:`sinks.gaps`), the checkpoint (:mod:`sinks.checkpoint`) and the status
file (:mod:`sinks.runstatus`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bus.wire import StoredEvent
from sinks.base import Sink
from sinks.calls import (
    CALL_WAIT_S,
    SHUTDOWN_CALL_WAIT_S,
    Call,
    Workers,
    apply_args,
    note_answered,
    note_hung,
    open_run,
    outcome,
)
from sinks.checkpoint import Checkpointer, safe_flush
from sinks.gaps import GapFiller
from sinks.retry import Retries
from sinks.runconfig import Counters, RuntimeConfig
from sinks.runstate import MAX_INVALID_LOGGED, Runs, RunState
from sinks.runstatus import StatusReport
from sinks.sources import EventSource, Rewind, SourceChanged
from sinks.state import StateDir

__all__ = ["Counters", "MAX_INVALID_LOGGED", "RuntimeConfig", "SinkRuntime"]

log = logging.getLogger(__name__)

_END = object()


class SinkRuntime:
    """Drive ``sink`` from ``source``; see the module docstring for the guarantees.

    ``state_dir`` (a path or :class:`StateDir`) holds the checkpoint and the
    status file; without it nothing is persisted (tests, one-shot replays).
    ``clock`` is monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        sink: Sink,
        source: EventSource,
        *,
        state_dir: StateDir | str | os.PathLike[str] | None = None,
        config: RuntimeConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
        claim_outputs: bool = True,
    ) -> None:
        self.sink = sink
        #: False when a parent process holds the sink's outputs for us (parallel replay).
        self.claim_outputs = claim_outputs
        self.source = source
        self.config = config or RuntimeConfig()
        self.counters = Counters()
        self.name = name or sink.name
        if state_dir is not None and not isinstance(state_dir, StateDir):
            state_dir = StateDir(state_dir)
        self.state: StateDir | None = state_dir
        #: Events accepted per round at most (:mod:`sinks.concurrent` pulls more).
        self.pull_limit = self.config.max_batch
        self._clock = clock
        self._stop = threading.Event()
        self._offset = 0  # next offset the subscription will deliver
        self._store_id: str | None = None
        self._dirty = False
        self._draining = False
        self._next_ckpt = 0.0
        self._next_status = 0.0
        self._last_latency_s: float | None = None
        self._phase = "starting"
        self._ckpt = Checkpointer(self.name, state_dir, source, self.counters)
        refetchable = bool(getattr(source, "refetchable", True))
        self.runs = Runs(
            self.name, self.config, self.counters, refetchable=refetchable,
            first_seq=lambda name: self._ckpt.runs.pop(name, 0), opened=self._open_backend,
        )  # fmt: skip
        self._calls = Workers(self.name)
        self._gaps = GapFiller(
            self.name, source, self.config, self.counters,
            lambda item: self.runs.accept(item, fill=True), refetchable,
        )  # fmt: skip
        self._report = StatusReport(self.name, sink, source)
        self._retries = Retries(
            self.name, self.config, self.counters, clock, self.runs.ready, self._applied,
            self._moved, self._close_backend,
        )  # fmt: skip

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint and return; safe from any thread."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> Counters:
        """Run until stopped, or until a bounded source is exhausted and drained."""
        if self.state is not None:
            self.state.acquire()
        if self.claim_outputs:
            try:
                self.sink.claim_outputs()
            except BaseException:
                if self.state is not None:
                    self.state.release()
                raise
        try:
            if self._restore():
                self._phase = "running"
                self._follow()
        finally:
            self._phase = "stopped"
            try:
                self._shutdown()
            finally:
                if self.claim_outputs:
                    self.sink.release_outputs()
                if self.state is not None:
                    self.state.release()
        return self.counters

    def _follow(self) -> None:
        stream = self.source.subscribe(self._offset)
        while True:
            try:
                self._loop(stream)
                return
            except SourceChanged as exc:
                # Offsets restart in a new store; (run, seq) dedupe keeps applied events out.
                log.warning("%s: %s; reading the new store from its start", self.name, exc)
                self.counters.store_changes += 1
                ok, self._store_id = self._wait_for_source()
                if not ok:
                    return
                self._offset = 0
                self.runs.new_store()
                if hasattr(self.source, "resume_generation"):
                    self.source.resume_generation = None
                stream = self.source.subscribe(0)

    def _wait_for_source(self) -> tuple[bool, str | None]:
        """The source's store id, waiting (bounded by stop()) while it does not answer."""
        delay, warned = 0.1, False
        while not self._stop.is_set():
            try:
                return True, self.source.store_id()
            except Exception as exc:
                if not warned:
                    log.warning("%s: waiting for the event source: %s", self.name, exc)
                    warned = True
                    self._phase = f"waiting for the event source: {exc}"[:200]
                self._write_status()
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
        return False, None

    def _loop(self, stream: Iterator[StoredEvent | None]) -> None:
        while not self._stop.is_set():
            if self.runs.full:
                # A source that cannot refetch: hold back instead of dropping events.
                self._pump()
                self._tick()
                self.runs.full = self.runs.any_full()
                if self.runs.full:
                    self._wait_for_retry()
                continue
            exhausted = self._pull(stream)
            self._pump()
            if exhausted:
                self._drain()
                return
            self._tick()

    def _pull(self, stream: Iterator[StoredEvent | None]) -> bool:
        """Accept up to ``pull_limit`` events from ``stream``; True when a bounded source ended."""
        deadline = self._clock() + self.config.batch_wait_ms / 1000.0
        limit = self.pull_limit
        n = 0
        while True:
            item = next(stream, _END)
            if item is _END:
                return True
            if item is None:
                return False
            if isinstance(item, Rewind):
                self._rewound(item)
                continue
            self._offset = max(self._offset, item.offset + 1)  # type: ignore[union-attr]
            self.runs.accept(item)  # type: ignore[arg-type]
            n += 1
            if n >= limit or self._stop.is_set() or self.runs.full:
                return False
            if n % 64 == 0 and self._clock() >= deadline:
                return False

    def _drain(self) -> None:
        """A bounded source ended: apply everything left, waiting out retries."""
        self._draining = True
        while self.runs.ready and not self._stop.is_set():
            self._pump()
            if not self.runs.ready:
                break
            self._tick()
            self._wait_for_retry()

    def _wait_for_retry(self) -> None:
        runs = [r for name in self.runs.ready if (r := self.runs.by_name.get(name))]
        calls = [r.call for r in runs if r.call is not None]
        waits = [r.retry_at for r in runs if r.call is None]
        delay = 0.5 if not waits else min(max(0.0, min(waits) - self._clock()), 0.5)
        if calls:
            calls[0].done.wait(delay)  # wakes as soon as a set-aside call answers
        else:
            self._stop.wait(delay)

    def _rewound(self, r: Rewind) -> None:
        """The store lost events after our position: go back to its safe offset."""
        self._offset = r.offset
        self.runs.rewind(r.offset)
        self._dirty = True
        self._ckpt.rewound(r)

    # ------------------------------------------------------------ restore / persist

    def _restore(self) -> bool:
        ok, self._store_id = self._wait_for_source()
        if ok:
            self._offset = self._ckpt.restore(self._store_id)
        return ok

    def _tick(self) -> None:
        now = self._clock()
        interval = self.config.checkpoint_interval_ms / 1000.0
        if self._dirty and (not self.sink.idempotent or now >= self._next_ckpt):
            self._checkpoint()
            self._next_ckpt = now + interval
        if self.state is not None and now >= self._next_status:
            self._write_status()
            self._next_status = now + self.config.status_interval_ms / 1000.0

    def _checkpoint(self) -> None:
        if self._ckpt.save(self._store_id, self._offset, self.runs):
            self._dirty = False

    def _write_status(self) -> None:
        if self.state is None:
            return
        try:
            self.state.save_status(self.status())
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot write status: %s", self.name, exc)

    def status(self) -> dict[str, Any]:
        """Counters, lag and the most recently active runs, as plain data."""
        cfg = self.config
        return self._report.build(
            self.runs.by_name, self._clock(), phase=self._phase, store_id=self._store_id,
            offset=self._offset, latency_s=self._last_latency_s,
            counters=self.counters, interval_s=cfg.status_interval_ms / 1000.0,
            deadline_s=cfg.call_deadline_ms / 1000.0, gap_reports=self._gaps.reports,
            losses=self._ckpt.losses,
        )  # fmt: skip

    def _shutdown(self) -> None:
        self._wait_for_calls()
        for run in self.runs:
            if run.backend is not None and run.call is None:
                safe_flush(run)
        self._checkpoint()
        for run in self.runs:
            if run.call is None:
                self._close_backend(run)
        self._calls.stop()
        try:
            self.sink.shutdown()
        except Exception:
            log.exception("%s: sink shutdown failed", self.name)
        self._write_status()
        try:
            self.source.close()
        except Exception:
            log.exception("%s: closing the source failed", self.name)

    def _wait_for_calls(self) -> None:
        """Give set-aside calls a bounded moment to answer; leave the rest behind."""
        deadline = self._clock() + SHUTDOWN_CALL_WAIT_S
        for run in self.runs:
            call = run.call
            if call is None:
                continue
            call.done.wait(max(0.0, deadline - self._clock()))
            if call.done.is_set():
                self._advance(run, self._clock(), finish_only=True)
                continue
            log.warning(
                "%s: run %s: a %s call has not answered for %.0fs; leaving it behind "
                "(its events are applied again from the checkpoint by the next start)",
                self.name, run.name, call.what, self._clock() - call.started,
            )  # fmt: skip

    # ------------------------------------------------------------ backend calls

    def _call_wait_s(self) -> float:
        return min(CALL_WAIT_S, self.config.call_deadline_ms / 1000.0)

    def _call(self, run: RunState, what: str, fn: Callable[..., Any], *args: Any,
              batch: list[StoredEvent] | None = None) -> Call | None:  # fmt: skip
        """Run ``fn(*args)`` on the worker; the finished call, or None when set aside."""
        call = Call(fn, args, what, batch or [], self._clock())
        worker = self._calls.run(call, self._call_wait_s())
        if worker is None:
            return call
        # Set the run aside with this worker; the next call gets a new one.
        run.call, run.worker = call, worker
        self.runs.ready.add(run.name)
        log.debug("%s: run %s: %s call set aside while it runs", self.name, run.name, what)
        return None

    def _finish(self, run: RunState, call: Call) -> None:
        """A set-aside call answered: its worker retires, its run comes back."""
        run.call = None
        if run.worker is not None:
            run.worker.stop()
            run.worker = None
        note_answered(call, self._clock(), self.name, run.name)

    def _open_backend(self, run: RunState) -> bool:
        if run.call is not None:
            return False
        call = self._call(run, "open", open_run, self.sink, run.name)
        return call is not None and self._opened(run, call)

    def _opened(self, run: RunState, call: Call) -> bool:
        exc = call.error
        if exc is not None:
            if not isinstance(exc, Exception):
                raise exc
            # Opening is retried for as long as it takes: there is no event to skip.
            self._retries.schedule(run, f"cannot open: {type(exc).__name__}: {exc}", None, exc)
            return False
        backend, resume = call.result
        run.attempts = 0
        run.backend = backend
        if resume is not None and resume > run.next_seq:
            log.info("%s: run %s already holds seqs below %d", self.name, run.name, resume)
            self.counters.duplicates += run.drop_below(resume)
        return True

    # ------------------------------------------------------------ applying

    def _pump(self) -> None:
        now = self._clock()
        for name in list(self.runs.ready):
            run = self.runs.by_name.get(name)
            if run is None:
                self.runs.ready.discard(name)
                continue
            self._advance(run, now)
            if not run.has_work:
                self.runs.ready.discard(name)

    def _advance(self, run: RunState, now: float, *, finish_only: bool = False) -> None:
        call = run.call
        if call is not None:
            if not call.done.is_set():
                if note_hung(call, now, self.config.call_deadline_ms / 1000.0, self.name,
                             run.name):  # fmt: skip
                    self.counters.hung_calls += 1
                return
            self._finish(run, call)
            if call.what == "open":
                if not self._opened(run, call):
                    return
            elif not self._retries.account(run, call.batch, *outcome(call)):
                return
        if finish_only or run.retry_at > now:
            return
        if run.backend is None and not self._open_backend(run):
            return
        while True:
            batch = run.next_batch(self.config.max_batch)
            if not batch:
                if run.has_work and self._on_gap(run, now):
                    continue
                return
            run.gap_since = None
            call = self._call(run, "apply", run.backend.apply, *apply_args(batch), batch=batch)
            if call is None:
                return  # set aside: the run goes on when the call answers
            if not self._retries.account(run, batch, *outcome(call)):
                return

    def _applied(self, run: RunState, items: list[StoredEvent]) -> None:
        run.took(items)
        self.counters.applied += len(items)
        self._dirty = True
        self._last_latency_s = max(0.0, time.time() - run.last_ts)  # type: ignore[operator]

    def _moved(self) -> None:
        self._dirty = True

    def _on_gap(self, run: RunState, now: float) -> bool:
        """next_seq is missing: fill it from the store, or report it; True on progress."""
        before = run.next_seq
        progress = self._gaps.on_gap(run, now, draining=self._draining)
        if run.next_seq != before:
            self._dirty = True  # reported and skipped
        return progress

    def _close_backend(self, run: RunState) -> None:
        backend, run.backend = run.backend, None
        if backend is None:
            return
        try:
            backend.flush()
            backend.close()
        except Exception:
            log.exception("%s: closing run %s failed", self.name, run.name)
