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
run at a time); ``stop()`` may come from any thread.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from bus.wire import StoredEvent
from rose.events import EventError, check_run_id
from sinks.base import ApplyResult, Outcome, RunSink, Sink
from sinks.sources import EventSource, Rewind, SourceChanged
from sinks.state import StateDir

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 500
DEFAULT_BATCH_WAIT_MS = 50.0
DEFAULT_MAX_PENDING_PER_RUN = 10_000
DEFAULT_RETRY_INITIAL_MS = 100.0
DEFAULT_RETRY_MAX_MS = 30_000.0
DEFAULT_GAP_GRACE_MS = 5_000.0
DEFAULT_FILL_INTERVAL_MS = 500.0
DEFAULT_CHECKPOINT_INTERVAL_MS = 1_000.0
DEFAULT_STATUS_INTERVAL_MS = 1_000.0
DEFAULT_MAX_RUNS = 100_000
DEFAULT_CALL_DEADLINE_MS = 10_000.0
#: The loop waits this long (at most) for a backend call before setting its run aside.
CALL_WAIT_S = 0.5
#: At shutdown, a call still running gets this long to answer before it is left behind.
SHUTDOWN_CALL_WAIT_S = 5.0
STATUS_RUNS_SHOWN = 50
MAX_INVALID_LOGGED = 20

_END = object()


@dataclass
class RuntimeConfig:
    """Knobs of the runtime; every buffer and wait is bounded by one of these."""

    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    max_pending_per_run: int = DEFAULT_MAX_PENDING_PER_RUN
    retry_initial_ms: float = DEFAULT_RETRY_INITIAL_MS
    retry_max_ms: float = DEFAULT_RETRY_MAX_MS
    #: Attempts per event before it is skipped (counted as failed); None = retry forever.
    max_attempts: int | None = None
    gap_grace_ms: float = DEFAULT_GAP_GRACE_MS
    fill_interval_ms: float = DEFAULT_FILL_INTERVAL_MS
    checkpoint_interval_ms: float = DEFAULT_CHECKPOINT_INTERVAL_MS
    status_interval_ms: float = DEFAULT_STATUS_INTERVAL_MS
    #: Finished runs remembered for dedupe beyond this many are forgotten, oldest first.
    max_runs: int = DEFAULT_MAX_RUNS
    #: A backend call running longer than this is reported as hung (its run waits for it).
    call_deadline_ms: float = DEFAULT_CALL_DEADLINE_MS

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_pending_per_run < 1:
            raise ValueError("max_batch and max_pending_per_run must be at least 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1, or None to retry forever")


@dataclass
class Counters:
    """What the runtime did; shown by ``rose status``."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    gaps: int = 0  # events reported missing and skipped
    filled: int = 0  # events fetched from the store to fill a gap
    retries: int = 0
    failed: int = 0  # events skipped after the retry policy gave up, or rejected
    invalid: int = 0  # events that do not decode or validate
    overflow: int = 0  # events dropped from a full run buffer (refetched later)
    store_changes: int = 0
    store_lost: int = 0  # events the store lost after this sink's position (re-read past)
    hung_calls: int = 0  # backend calls that outlived their deadline


class _Call:
    """One backend call on a worker thread; ``done`` is set when it returned or raised."""

    __slots__ = ("fn", "args", "what", "batch", "done", "result", "error", "started", "hung")

    def __init__(self, fn: Callable[..., Any], args: tuple, what: str, batch: list[StoredEvent]) -> None:
        self.fn = fn
        self.args = args
        self.what = what
        self.batch = batch
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = 0.0
        self.hung = False


class _Worker:
    """A daemon thread running backend calls one after another."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: _Call) -> None:
        self._calls.put(call)

    def stop(self, wait_s: float = 0.0) -> None:
        """Let the thread end after its current call (waiting up to ``wait_s`` for that)."""
        self._calls.put(None)
        if wait_s:
            self._thread.join(wait_s)

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            try:
                call.result = call.fn(*call.args)
            except BaseException as exc:  # handed to the runtime, which decides
                call.error = exc
            finally:
                call.done.set()


class _Run:
    """Per-run bookkeeping."""

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
        "_rate_mark",
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
        self._rate_mark = 0
        #: After a batch raised, events up to this seq go one by one to find the culprit.
        self.isolate_until = -1
        #: A backend call that outlived CALL_WAIT_S, and the worker left to it.
        self.call: _Call | None = None
        self.worker: _Worker | None = None


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
        self._clock = clock
        self._stop = threading.Event()
        self._runs: dict[str, _Run] = {}
        self._ready: set[str] = set()
        self._ckpt_runs: dict[str, int] = {}
        self._offset = 0  # next offset the subscription will deliver
        self._store_id: str | None = None
        self._dirty = False
        self._draining = False
        self._next_ckpt = 0.0
        self._next_status = 0.0
        self._started_wall = time.time()
        self._head: int | None = None
        self._last_latency_s: float | None = None
        self._gap_log: list[dict[str, Any]] = []
        self._phase = "starting"
        self._full = False
        self._restored = False
        self._refetchable = bool(getattr(source, "refetchable", True))
        self._last_status_t: float | None = None
        self._worker: _Worker | None = None
        self._workers = 0
        self._losses: list[dict[str, Any]] = []

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
                for run in self._runs.values():
                    for item in run.pending.values():
                        item.offset = 0  # old offsets mean nothing in the new store
                    run.behind_offset = 0 if run.behind_offset is not None else None
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
            if self._full:
                # A source that cannot refetch: hold back instead of dropping events.
                self._pump()
                self._tick()
                self._full = any(
                    len(r.pending) >= self.config.max_pending_per_run for r in self._runs.values()
                )
                if self._full:
                    self._wait_for_retry()
                continue
            exhausted = self._pull(stream)
            self._pump()
            if exhausted:
                self._drain()
                return
            self._tick()

    def _pull(self, stream: Iterator[StoredEvent | None]) -> bool:
        """Accept up to one batch from ``stream``; True when a bounded source ended."""
        cfg = self.config
        deadline = self._clock() + cfg.batch_wait_ms / 1000.0
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
            self._accept(item)  # type: ignore[arg-type]
            n += 1
            if n >= cfg.max_batch or self._stop.is_set() or self._full:
                return False
            if n % 64 == 0 and self._clock() >= deadline:
                return False

    def _drain(self) -> None:
        """A bounded source ended: apply everything left, waiting out retries."""
        self._draining = True
        while self._ready and not self._stop.is_set():
            self._pump()
            if not self._ready:
                break
            self._tick()
            self._wait_for_retry()

    def _wait_for_retry(self) -> None:
        runs = [r for name in self._ready if (r := self._runs.get(name))]
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
        for run in self._runs.values():
            for item in run.pending.values():
                item.offset = min(item.offset, r.offset)
            if run.behind_offset is not None:
                run.behind_offset = min(run.behind_offset, r.offset)
        self._dirty = True
        if not r.lost:
            log.info(
                "%s: store generation %s; re-reading from offset %d", self.name, r.generation,
                r.offset,
            )  # fmt: skip
            return
        self.counters.store_lost += r.lost
        self._losses.append(
            {"lost": r.lost, "after": r.after, "generation": r.generation, "time": time.time()}
        )
        del self._losses[:-20]
        log.warning(
            "%s: the store lost %d event(s) after offset %d (it is at generation %s now); "
            "re-reading from offset %d and skipping events already applied; events it lost "
            "that learners do not send again are missing from this sink",
            self.name,
            r.lost,
            r.after,
            r.generation,
            r.offset,
        )

    # ------------------------------------------------------------ restore / persist

    def _restore(self) -> bool:
        ckpt = self.state.load_checkpoint() if self.state is not None else {}
        ok, self._store_id = self._wait_for_source()
        if not ok:
            return False
        self._ckpt_runs = dict(ckpt.get("runs", {}))
        self._offset = int(ckpt.get("offset", 0)) if self._store_id is not None else 0
        generation = ckpt.get("generation")
        if hasattr(self.source, "resume_generation"):
            self.source.resume_generation = generation if isinstance(generation, int) else None
        old_id = ckpt.get("store_id")
        if ckpt and old_id != self._store_id and self._store_id is not None:
            # A replaced store reuses offsets: start it from 0, keep dedupe by (run, seq).
            log.warning(
                "%s: the broker store changed (checkpoint had %s, now %s); reading the new "
                "store from its start, skipping events already applied",
                self.name,
                old_id,
                self._store_id,
            )
            self.counters.store_changes += 1
            self._offset = 0
            if hasattr(self.source, "resume_generation"):
                self.source.resume_generation = None
        if ckpt:
            log.info(
                "%s: resuming at offset %d with %d known run(s)",
                self.name,
                self._offset,
                len(self._ckpt_runs),
            )
        self._restored = True
        return True

    def _low_water(self) -> int:
        """The offset to resume from: nothing before it is left unapplied."""
        low = self._offset
        for run in self._runs.values():
            if run.pending:
                low = min(low, min(item.offset for item in run.pending.values()))
            if run.behind_offset is not None:
                low = min(low, run.behind_offset)
        return low

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
        if self.state is None or not self._restored:
            self._dirty = False
            return
        for run in self._runs.values():
            if run.call is not None:
                continue  # its backend is busy; its unapplied events hold the low water
            if run.backend is not None and not _safe_flush(run):
                log.warning("%s: run %s did not flush; checkpoint deferred", self.name, run.name)
                return
        runs = dict(self._ckpt_runs)
        runs.update({name: r.next_seq for name, r in self._runs.items()})
        generation = getattr(self.source, "generation", None)
        try:
            self.state.save_checkpoint(
                self._store_id, self._low_water(), runs, generation=generation
            )
            self._dirty = False
        except OSError as exc:
            log.error("%s: cannot write checkpoint: %s", self.name, exc)

    def _write_status(self) -> None:
        if self.state is None:
            return
        try:
            self.state.save_status(self.status())
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot write status: %s", self.name, exc)

    def status(self) -> dict[str, Any]:
        """Counters, lag and the most recently active runs, as plain data."""
        now = self._clock()
        if self._phase == "running":
            try:
                self._head = self.source.head_offset()
            except Exception as exc:  # a status probe must never stop the sink
                log.debug("head_offset failed: %s", exc)
        pending = sum(len(r.pending) for r in self._runs.values())
        lag = pending
        if self._head is not None:
            lag += max(0, self._head + 1 - self._offset)
        runs = sorted(
            (r for r in self._runs.values() if r.applied or r.pending),
            key=lambda r: r.last_ts or 0.0,
            reverse=True,
        )[:STATUS_RUNS_SHOWN]
        dt = now - self._last_status_t if self._last_status_t is not None else 0.0
        self._last_status_t = now
        for r in runs:
            r.rate = (r.applied - r._rate_mark) / dt if dt > 0 else 0.0
            r._rate_mark = r.applied
        return {
            "sink": self.name,
            "pid": os.getpid(),
            "phase": self._phase,
            "time": time.time(),
            "started": self._started_wall,
            "store_id": self._store_id,
            "offset": self._offset,
            "head": self._head,
            "lag": lag,
            "latency_s": self._last_latency_s,
            "counters": asdict(self.counters),
            "interval_s": self.config.status_interval_ms / 1000.0,
            "runs_tracked": len(self._runs),
            "retrying": sorted(r.name for r in self._runs.values() if r.attempts)[:20],
            "gap_reports": self._gap_log[-20:],
            "store_losses": self._losses[-20:],
            "hung": self._hung(now),
            "sink_stats": self._sink_stats(),
            "runs": [
                {
                    "run": r.name,
                    "next_seq": r.next_seq,
                    "pending": len(r.pending),
                    "kind": r.last_kind,
                    "iteration": r.iteration,
                    "metric_name": r.metric_name,
                    "metric_value": _jsonable(r.metric_value),
                    "ts": r.last_ts,
                    "applied": r.applied,
                    "events_per_s": round(r.rate, 1),
                    "retrying": bool(r.attempts),
                    "last_error": r.last_error[:200],
                    "done": r.done,
                    "retry_in_s": max(0.0, r.retry_at - now) if r.attempts else 0.0,
                }
                for r in runs
            ],
        }

    def _hung(self, now: float) -> list[dict[str, Any]]:
        deadline = self.config.call_deadline_ms / 1000.0
        out = []
        for r in list(self._runs.values()):
            call = r.call
            if call is not None and not call.done.is_set() and now - call.started >= deadline:
                out.append(
                    {"run": r.name, "call": call.what, "kind": self.name,
                     "for_s": round(now - call.started, 1)}
                )  # fmt: skip
        return out[:20]

    def _sink_stats(self) -> dict[str, Any]:
        stats = getattr(self.sink, "stats", None)
        if stats is None:
            return {}
        try:
            return dict(stats())
        except Exception as exc:  # a status probe must never stop the sink
            log.debug("sink stats failed: %s", exc)
            return {}

    def _shutdown(self) -> None:
        self._wait_for_calls()
        for run in self._runs.values():
            if run.backend is not None and run.call is None:
                _safe_flush(run)
        self._checkpoint()
        for run in self._runs.values():
            if run.call is None:
                self._close_backend(run)
        if self._worker is not None:
            self._worker.stop(wait_s=1.0)  # idle: it ends at once
            self._worker = None
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
        for run in self._runs.values():
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
                self.name,
                run.name,
                call.what,
                self._clock() - call.started,
            )

    # ------------------------------------------------------------ backend calls

    def _call(self, run: _Run, what: str, fn: Callable[..., Any], *args: Any,
              batch: list[StoredEvent] | None = None) -> _Call | None:  # fmt: skip
        """Run ``fn(*args)`` on the worker; the finished call, or None when set aside."""
        if self._worker is None:
            self._workers += 1
            self._worker = _Worker(f"rose-sink-{self.name}-{self._workers}")
        call = _Call(fn, args, what, batch or [])
        call.started = self._clock()
        self._worker.submit(call)
        if call.done.wait(min(CALL_WAIT_S, self.config.call_deadline_ms / 1000.0)):
            return call
        # Set the run aside with this worker; the next call gets a new one.
        run.call, run.worker, self._worker = call, self._worker, None
        self._ready.add(run.name)
        log.debug("%s: run %s: %s call set aside while it runs", self.name, run.name, what)
        return None

    def _check_hung(self, run: _Run, call: _Call, now: float) -> None:
        elapsed = now - call.started
        if not call.hung and elapsed >= self.config.call_deadline_ms / 1000.0:
            call.hung = True
            self.counters.hung_calls += 1
            log.warning(
                "%s: %s call hung for %.0f s on run %s; the sink's other runs go on, this "
                "one waits for the answer",
                self.name,
                call.what,
                elapsed,
                run.name,
            )

    def _finish(self, run: _Run, call: _Call) -> None:
        """A set-aside call answered: its worker retires, its run comes back."""
        run.call = None
        if run.worker is not None:
            run.worker.stop()
            run.worker = None
        if call.hung:
            log.warning(
                "%s: run %s: the %s call that hung answered after %.0f s",
                self.name,
                run.name,
                call.what,
                self._clock() - call.started,
            )

    # ------------------------------------------------------------ intake

    def _run_state(self, name: str) -> _Run | None:
        run = self._runs.get(name)
        if run is not None:
            return run
        try:
            check_run_id(name)
        except EventError as exc:
            self.counters.invalid += 1
            self._log_invalid("rejecting an event: %s", exc)
            return None
        run = _Run(name, self._ckpt_runs.pop(name, 0))
        self._runs[name] = run
        self._open_backend(run)
        if len(self._runs) > self.config.max_runs:
            self._forget_finished()
        return run

    def _open_backend(self, run: _Run) -> bool:
        if run.call is not None:
            return False
        call = self._call(run, "open", _open_run, self.sink, run.name)
        return call is not None and self._opened(run, call)

    def _opened(self, run: _Run, call: _Call) -> bool:
        exc = call.error
        if exc is not None:
            if not isinstance(exc, Exception):
                raise exc
            # Opening is retried for as long as it takes: there is no event to skip.
            self._schedule_retry(run, f"cannot open: {type(exc).__name__}: {exc}", None, exc)
            return False
        backend, resume = call.result
        run.attempts = 0
        run.backend = backend
        if resume is not None and resume > run.next_seq:
            log.info("%s: run %s already holds seqs below %d", self.name, run.name, resume)
            run.next_seq = resume
            for seq in [s for s in run.pending if s < resume]:
                del run.pending[seq]
                self.counters.duplicates += 1
        return True

    def _accept(self, item: StoredEvent, *, fill: bool = False) -> bool:
        """Buffer ``item`` unless it is a duplicate; True when it was new."""
        if not fill:
            self.counters.received += 1
        run = self._run_state(item.run)
        if run is None:
            return False
        if item.seq < run.next_seq or item.seq in run.pending:
            if not fill:
                self.counters.duplicates += 1
            return False
        if len(run.pending) >= self.config.max_pending_per_run:
            if not self._refetchable:
                self._full = True
            else:
                self.counters.overflow += 1
                if run.behind_offset is None or item.offset < run.behind_offset:
                    run.behind_offset = item.offset
                self._ready.add(run.name)
                return False
        try:
            item.load()
        except EventError as exc:
            # Treated as never received: a valid copy may still come (or fill the gap).
            if not fill:
                self.counters.invalid += 1
                self._log_invalid("run %s seq %d is invalid: %s", run.name, item.seq, exc)
            return False
        run.pending[item.seq] = item
        if run.done:
            run.done = False  # an event after stop (unusual): the run reopens
        self._ready.add(run.name)
        return True

    def _log_invalid(self, msg: str, *args: Any) -> None:
        n = self.counters.invalid
        if n <= MAX_INVALID_LOGGED:
            log.warning("%s: " + msg, self.name, *args)
            if n == MAX_INVALID_LOGGED:
                log.warning("%s: further invalid events are only counted", self.name)
        else:
            log.debug("%s: " + msg, self.name, *args)

    # ------------------------------------------------------------ applying

    def _pump(self) -> None:
        now = self._clock()
        for name in list(self._ready):
            run = self._runs.get(name)
            if run is None:
                self._ready.discard(name)
                continue
            self._advance(run, now)
            if not run.pending and run.behind_offset is None:
                self._ready.discard(name)

    def _advance(self, run: _Run, now: float, *, finish_only: bool = False) -> None:
        call = run.call
        if call is not None:
            if not call.done.is_set():
                self._check_hung(run, call, now)
                return
            self._finish(run, call)
            if call.what == "open":
                if not self._opened(run, call):
                    return
            elif not self._after_apply(run, call.batch, *_outcome(call)):
                return
        if finish_only or run.retry_at > now:
            return
        if run.backend is None and not self._open_backend(run):
            return
        while True:
            batch = self._next_batch(run)
            if not batch:
                if (run.pending or run.behind_offset is not None) and self._on_gap(run, now):
                    continue
                return
            run.gap_since = None
            call = self._apply(run, batch)
            if call is None:
                return  # set aside: the run goes on when the call answers
            if not self._after_apply(run, batch, *_outcome(call)):
                return

    def _after_apply(self, run: _Run, batch: list[StoredEvent], result: ApplyResult,
                     raised: BaseException | None) -> bool:  # fmt: skip
        """Account for a batch's result; True when the run may go on at once."""
        if raised is not None:
            if not isinstance(raised, Exception):
                raise raised
            if not run.attempts and len(batch) == 1:
                log.warning(
                    "%s: run %s: the sink raised on seq %d",
                    self.name,
                    run.name,
                    batch[0].seq,
                    exc_info=raised,
                )
            if len(batch) > 1:
                # Which event raised is unknown: go one by one through this batch.
                run.isolate_until = batch[-1].seq
                return True
        done = max(0, min(result.applied, len(batch)))
        if done:
            self._applied(run, batch[:done])
        if result.outcome is Outcome.SUCCESS and done == len(batch):
            if run.attempts:
                log.info(
                    "%s: run %s recovered after %d retr%s",
                    self.name,
                    run.name,
                    run.attempts,
                    "y" if run.attempts == 1 else "ies",
                )
                run.attempts, run.last_error = 0, ""
            if run.done and not run.pending:
                self._close_backend(run)
                return False
            return True
        if result.outcome is Outcome.REJECT:
            self._skip(run, f"rejected by the sink: {result.error}")
            return True
        error = result.error or "the sink applied only part of a batch"
        if not self._schedule_retry(run, error, result.retry_after_s):
            self._skip(run, f"gave up after {run.attempts} attempt(s): {error}")
            run.attempts, run.retry_at = 0, 0.0
            return True
        return False

    def _next_batch(self, run: _Run) -> list[StoredEvent]:
        """The run's next contiguous events, one at a time while isolating a raise."""
        max_batch = 1 if run.next_seq <= run.isolate_until else self.config.max_batch
        batch: list[StoredEvent] = []
        seq = run.next_seq
        pending = run.pending
        while len(batch) < max_batch:
            item = pending.get(seq)
            if item is None:
                break
            batch.append(item)
            seq += 1
        return batch

    def _apply(self, run: _Run, batch: list[StoredEvent]) -> _Call | None:
        """Hand ``batch`` to the run's backend: the finished call, or None when set aside."""
        assert run.backend is not None
        return self._call(run, "apply", run.backend.apply, *_apply_args(batch), batch=batch)

    def _applied(self, run: _Run, items: list[StoredEvent]) -> None:
        for item in items:
            del run.pending[item.seq]
        run.next_seq = items[-1].seq + 1
        run.applied += len(items)
        self.counters.applied += len(items)
        self._dirty = True
        last = items[-1].event
        assert last is not None
        run.last_kind = last["kind"]
        run.last_ts = last["ts"]
        self._last_latency_s = max(0.0, time.time() - last["ts"])
        for item in reversed(items):
            ev = item.event
            if ev is not None and ev["kind"] == "iteration":
                body = ev["body"]
                run.iteration = body.get("iteration")
                run.metric_name = body.get("metric_name")
                run.metric_value = body.get("metric_value")
                break
        if last["kind"] == "stop":
            run.done = True

    def _skip(self, run: _Run, why: str) -> None:
        """Give up on the event at next_seq: count it, log it, move on."""
        self.counters.failed += 1
        log.error("%s: run %s: skipping seq %d, %s", self.name, run.name, run.next_seq, why)
        run.pending.pop(run.next_seq, None)
        run.next_seq += 1
        run.last_error = why
        self._dirty = True

    def _schedule_retry(
        self,
        run: _Run,
        error: str,
        retry_after_s: float | None,
        exc: BaseException | None = None,
    ) -> bool:
        """Back off before the next attempt; False when the retry policy is exhausted."""
        cfg = self.config
        run.attempts += 1
        self.counters.retries += 1
        delay = min(cfg.retry_max_ms, cfg.retry_initial_ms * 2 ** min(run.attempts - 1, 30))
        delay /= 1000.0
        if retry_after_s is not None:
            delay = min(max(delay, retry_after_s), cfg.retry_max_ms / 1000.0)
        run.retry_at = self._clock() + delay
        self._ready.add(run.name)
        if cfg.max_attempts is not None and run.attempts >= cfg.max_attempts:
            run.last_error = error
            return False
        if run.attempts == 1 or error != run.last_error:
            log.warning(
                "%s: run %s failed at seq %d (%s); retrying in %.2fs",
                self.name,
                run.name,
                run.next_seq,
                error,
                delay,
                exc_info=exc,
            )
        else:
            log.debug("%s: run %s attempt %d failed: %s", self.name, run.name, run.attempts, error)
        run.last_error = error
        self._ready.add(run.name)
        return True

    def _on_gap(self, run: _Run, now: float) -> bool:
        """next_seq is missing: fill it from the store, or report it; True on progress."""
        if run.gap_since is None:
            run.gap_since = now
        if self._refetchable and now - run.last_fill >= self.config.fill_interval_ms / 1000.0:
            run.last_fill = now
            if self._fill(run):
                return True
        if not run.pending:
            return False
        if (
            self._draining
            or now - run.gap_since >= self.config.gap_grace_ms / 1000.0
            or (not self._refetchable and len(run.pending) >= self.config.max_pending_per_run)
        ):
            first = min(run.pending)
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
            self._gap_log.append({"run": run.name, "from": run.next_seq, "to": first - 1})
            del self._gap_log[:-100]
            run.next_seq = first
            run.gap_since = None
            self._dirty = True
            return True
        return False

    def _fill(self, run: _Run) -> bool:
        try:
            items = self.source.run_events(run.name, run.next_seq)
        except Exception as exc:
            log.warning("%s: cannot fetch run %s from the store: %s", self.name, run.name, exc)
            return False
        room = self.config.max_pending_per_run - len(run.pending)
        new = 0
        for item in items:
            if item.run != run.name or item.seq < run.next_seq or item.seq in run.pending:
                continue
            if room <= 0:
                break
            if self._accept(item, fill=True):
                new += 1
                room -= 1
        if room > 0:
            run.behind_offset = None  # everything the store holds is buffered now
        self.counters.filled += new
        if new:
            log.debug("%s: run %s: %d event(s) fetched from the store", self.name, run.name, new)
        return run.next_seq in run.pending

    def _close_backend(self, run: _Run) -> None:
        backend, run.backend = run.backend, None
        if backend is None:
            return
        try:
            backend.flush()
            backend.close()
        except Exception:
            log.exception("%s: closing run %s failed", self.name, run.name)

    def _forget_finished(self) -> None:
        excess = len(self._runs) - self.config.max_runs
        for name in [n for n, r in self._runs.items() if r.done and not r.pending][:excess]:
            del self._runs[name]


def _open_run(sink: Sink, name: str) -> tuple[RunSink, int | None]:
    backend = sink.open_run(name)
    return backend, backend.resume_seq()


def _apply_args(batch: list[StoredEvent]) -> tuple:
    """A backend's ``apply`` arguments: the events, and their lines when read as text."""
    events = [item.event for item in batch]
    if batch[0].line is None:
        return (events,)
    return (events, [item.line for item in batch])


def _outcome(call: _Call) -> tuple[ApplyResult, BaseException | None]:
    """An apply call's result; one that raised counts as a retry with nothing applied."""
    if call.error is not None:
        exc = call.error
        return ApplyResult.retry(0, f"{type(exc).__name__}: {exc}"), exc
    return call.result, None


def _safe_flush(run: _Run) -> bool:
    try:
        return bool(run.backend.flush()) if run.backend is not None else True
    except Exception:
        log.exception("flushing run %s failed", run.name)
        return False


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else str(x)
    return str(x)
