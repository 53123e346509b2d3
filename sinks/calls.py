"""Backend calls on worker threads, and the deadline that makes one hung.

Every call of the runtime into a backend (open a run, apply a batch) runs on a
worker thread.  Calls that answer within :data:`CALL_WAIT_S` share one worker;
a call still running then is set aside with its run and keeps that worker to
itself (the next call gets a new one), so one stuck backend call never stops
the other runs.  Past the deadline it is reported as hung, once; the run
waits for its answer and carries on from it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from bus.wire import StoredEvent
from sinks.base import ApplyResult, RunSink, Sink

# The runtime's parts log under its name: its lines are listed by that name for users.
log = logging.getLogger("sinks.runtime")

#: The loop waits this long (at most) for a backend call before setting its run aside.
CALL_WAIT_S = 0.5
#: At shutdown, a call still running gets this long to answer before it is left behind.
SHUTDOWN_CALL_WAIT_S = 5.0


class Call:
    """One backend call on a worker thread; ``done`` is set when it returned or raised."""

    __slots__ = ("fn", "args", "what", "batch", "done", "result", "error", "started", "hung")

    def __init__(self, fn: Callable[..., Any], args: tuple, what: str, batch: list[StoredEvent],
                 started: float = 0.0) -> None:  # fmt: skip
        self.fn = fn
        self.args = args
        self.what = what
        self.batch = batch
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = started
        self.hung = False

    def overdue(self, now: float, deadline_s: float) -> bool:
        """Still running ``deadline_s`` after it started."""
        return not self.done.is_set() and now - self.started >= deadline_s


class Worker:
    """A daemon thread running backend calls one after another."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Call) -> None:
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


class Workers:
    """One sink's worker threads: a shared one, and one of its own per call set aside."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._shared: Worker | None = None
        self._started = 0
        self._own = 0

    def run(self, call: Call, wait_s: float) -> Worker | None:
        """Run ``call`` on the shared worker, waiting up to ``wait_s`` for its answer.

        None when it answered; else the worker, which is left to the call (the
        next call gets a new shared worker).
        """
        if self._shared is None:
            self._started += 1
            self._shared = Worker(f"rose-sink-{self.name}-{self._started}")
        self._shared.submit(call)
        if call.done.wait(wait_s):
            return None
        worker, self._shared = self._shared, None
        return worker

    def start_own(self, call: Call) -> Worker:
        """Start ``call`` at once on a worker of its own (calls of several runs in flight)."""
        self._own += 1
        worker = Worker(f"rose-sink-{self.name}-w{self._own}")
        worker.submit(call)
        return worker

    def stop(self) -> None:
        """End the shared worker (idle between calls: it ends at once)."""
        if self._shared is not None:
            self._shared.stop(wait_s=1.0)
            self._shared = None


def note_hung(call: Call, now: float, deadline_s: float, sink: str, run: str) -> bool:
    """Mark ``call`` hung once it outlived ``deadline_s``; True (and logged) the first time."""
    if call.hung or not call.overdue(now, deadline_s):
        return False
    call.hung = True
    log.warning(
        "%s: %s call hung for %.0f s on run %s; the sink's other runs go on, this "
        "one waits for the answer",
        sink,
        call.what,
        now - call.started,
        run,
    )
    return True


def note_answered(call: Call, now: float, sink: str, run: str) -> None:
    """A call that was reported hung answered at last: say so."""
    if call.hung:
        log.warning(
            "%s: run %s: the %s call that hung answered after %.0f s",
            sink,
            run,
            call.what,
            now - call.started,
        )


def open_run(sink: Sink, name: str) -> tuple[RunSink, int | None]:
    """The open call: the run's backend, and the seq it already holds up to."""
    backend = sink.open_run(name)
    return backend, backend.resume_seq()


def apply_args(batch: list[StoredEvent]) -> tuple:
    """A backend's ``apply`` arguments: the events, and their lines when read as text."""
    events = [item.event for item in batch]
    if batch[0].line is None:
        return (events,)
    return (events, [item.line for item in batch])


def outcome(call: Call) -> tuple[ApplyResult, BaseException | None]:
    """An apply call's result; one that raised counts as a retry with nothing applied."""
    if call.error is not None:
        exc = call.error
        return ApplyResult.retry(0, f"{type(exc).__name__}: {exc}"), exc
    return call.result, None
