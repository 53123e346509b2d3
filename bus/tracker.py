"""BusTracker: the learner's side of the bus.

Every callback becomes one event, msgpack-encoded and sent on the learner's own
thread through a non-blocking XPUB socket connected to the broker's XSUB; XPUB
(with XPUB_VERBOSE) sees the broker subscribe (``\\x01``: "broker up", again
after every restart).  The parts, each in its module: the outbox keeps every
event until the broker acknowledges it and re-sends at each (re)subscription
(:mod:`bus.outbox`); the link reads the socket monitor: disconnects, CURVE
refusals (:mod:`bus.link`); what is not acknowledged when the loop ends, the
tracker closes or memory runs over its bound goes to the fallback log, told
once with the command that delivers it (:mod:`bus.fallback`); the ``spool=``
and fallback logs are written from a thread of their own (:mod:`bus.spool`).

Why the send and the ack reading stay on the learner's thread: a Python thread
behind an inproc socket starves on the GIL, which would turn HWM overflow into
the normal case.  Acks and monitor events are read opportunistically, at most
every millisecond, with non-blocking calls.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from bus.checks import at_least
from bus.fallback import FallbackLog, fallback_dir_of
from bus.lifetime import close_at_exit, closed
from bus.link import Link, connect, find_broker
from bus.outbox import Out, Outbox, send_frames
from bus.security import client_curve
from bus.spool import Spooler
from bus.wire import header_prefix, topic_for
from rose.events.bodies import iteration_event, start_event, stop_event
from rose.events.feed import EventTracker
from rose.events.msgpack_codec import encode
from rose.events.schema import MAX_EVENT_BYTES
from rose.logonce import RepeatLog
from rose.tracking import IterationState, PipelineManifest

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 100_000
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024
DEFAULT_SNDHWM = 10_000
DEFAULT_START_WAIT_MS = 200
#: flush/close wait at most this long for acknowledgements from a connected broker ...
DEFAULT_FLUSH_TIMEOUT_MS = 10_000
#: ... and this long from a broker that refuses connections or this learner's key.
DEFAULT_UNREACHABLE_MS = 1000
DEFAULT_RECONNECT_IVL_MS = 10
DEFAULT_DRAIN_BUDGET_US = 2000
DEFAULT_SPOOL_SYNC_INTERVAL_S = 0.5
DEFAULT_SPOOL_MAX_QUEUE = 100_000
#: How often the tracker looks for acks, broker disconnects and (re)subscriptions.
CHECK_INTERVAL_S = 0.001
#: Acknowledged events released per check on the hot path (the rest at the next checks).
TRIM_BATCH = 512
#: While flushing, re-send the oldest unacknowledged event when no ack came for this long.
ACK_RETRY_S = 0.5

#: The counters ``stats()`` reports.
_STATS = (
    "sent", "resent", "acknowledged", "fallback", "spooled", "dropped", "oversized",
    "pending", "unacked", "subscriptions",
)  # fmt: skip


class BusTracker(EventTracker):
    """Publishes every tracker callback as an event to a ``rose bus`` broker.

    Contract: no callback blocks beyond a small bound or raises into the
    learner, whatever the broker and sinks are doing (down, slow, stopped,
    restarting), and no event is lost without a warning saying where it is.
    The bounds: the very first event waits up to ``start_wait_ms`` for the
    broker's subscription (so ``start`` is not lost to the slow joiner); a
    backlog is drained for at most ``drain_budget_us`` per callback;
    ``on_stop`` and ``close`` wait for acknowledgements at most
    ``flush_timeout_ms``, and at most ``unreachable_ms`` while a broker never
    reached refuses the connection, or the broker refuses this learner's key.
    Every other callback is an encode plus a non-blocking send.

    Unacknowledged events are held in memory up to ``max_pending`` events /
    ``max_pending_bytes``; beyond that the oldest go to the fallback log.
    ``fallback`` is the fallback directory (default :func:`bus.fallback.default_fallback_dir`,
    or $ROSE_FALLBACK_DIR); ``fallback=False`` drops them instead (counted and
    warned).  ``spool=`` additionally appends *every* event to a local JSONL
    event log (a file, or a directory for one file per run).

    Counters: ``sent`` (first sends), ``resent``, ``acknowledged``,
    ``fallback`` (events written to the fallback log), ``spooled``, ``dropped``
    (lost: only with ``fallback=False`` or when even the fallback log failed).
    Call it from one thread at a time (the learner's); ``close()`` is
    idempotent and also runs at interpreter exit.

    ``endpoint`` is the broker's frontend (``tcp://login:5555``); or pass
    ``bus=<store>/bus.json``; or set ROSE_BUS to either.

    CURVE (a broker started with ``--curve-secret-key``): ``server_key`` is the
    broker's public key (a key file or 40 z85 characters; read from bus.json
    when ``bus=`` is given, or from $ROSE_SERVER_KEY) and ``client_key`` this
    learner's ``NAME.key_secret`` file (or $ROSE_CLIENT_KEY), whose public half
    must be in the broker's authorized keys.  Key mistakes raise ValueError
    here; a key the broker refuses is warned once, with the cause.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        bus: str | os.PathLike[str] | None = None,
        fallback: str | os.PathLike[str] | bool | None = None,
        spool: str | os.PathLike[str] | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        sndhwm: int = DEFAULT_SNDHWM,
        start_wait_ms: int = DEFAULT_START_WAIT_MS,
        flush_timeout_ms: int = DEFAULT_FLUSH_TIMEOUT_MS,
        unreachable_ms: int = DEFAULT_UNREACHABLE_MS,
        reconnect_ivl_ms: int = DEFAULT_RECONNECT_IVL_MS,
        drain_budget_us: int = DEFAULT_DRAIN_BUDGET_US,
        spool_sync_interval_s: float = DEFAULT_SPOOL_SYNC_INTERVAL_S,
        context: zmq.Context | None = None,
        server_key: str | os.PathLike[str] | bytes | None = None,
        client_key: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        endpoint, bus, info = find_broker(endpoint, bus)
        curve = client_curve(server_key, client_key, bus_info=info)
        at_least(
            "BusTracker", 1, max_pending=max_pending, max_pending_bytes=max_pending_bytes, sndhwm=sndhwm
        )
        at_least(
            "BusTracker",
            0,
            start_wait_ms=start_wait_ms,
            flush_timeout_ms=flush_timeout_ms,
            unreachable_ms=unreachable_ms,
            drain_budget_us=drain_budget_us,
        )
        self._fallback = FallbackLog(
            fallback_dir_of(fallback),
            endpoint,
            str(bus) if bus is not None else endpoint,
            None if client_key is None else str(client_key),
        )
        self.endpoint = endpoint
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.start_wait_ms = start_wait_ms
        self.flush_timeout_ms = flush_timeout_ms
        self.unreachable_s = unreachable_ms / 1000
        self.drain_budget_s = drain_budget_us / 1e6
        self.max_event_bytes = MAX_EVENT_BYTES

        self._lost = 0  # events lost to internal failures (the fallback log counts its own)
        self.oversized = 0
        self._box = Outbox()
        self._waited_s = 0.0  # the last flush's budget, for the warning
        self._problems = RepeatLog(log)  # internal failures: the first is told
        self._waited = False
        self._next_check = 0.0

        self._own_ctx = context is None
        self._ctx = zmq.Context(io_threads=1) if context is None else context
        try:
            sock, monitor = connect(
                self._ctx, endpoint, curve, sndhwm=sndhwm, reconnect_ivl_ms=reconnect_ivl_ms
            )
        except ValueError:
            if self._own_ctx:
                self._ctx.term()
            raise
        self._link = Link(endpoint, monitor, self._box)
        self._sock: zmq.Socket | None = sock
        self._spooler = (
            Spooler(spool, spool_sync_interval_s, DEFAULT_SPOOL_MAX_QUEUE) if spool else None
        )
        self._lock = threading.Lock()  # only guards close() against a concurrent atexit
        close_at_exit(self)

    # ------------------------------------------------------------ counters

    @property
    def sent(self) -> int:
        """Events sent once (re-sends aside)."""
        return self._box.sent

    @property
    def resent(self) -> int:
        return self._box.resent

    @property
    def acknowledged(self) -> int:
        return self._box.acknowledged

    @property
    def dropped(self) -> int:
        """Events lost: only with ``fallback=False``, or when even the fallback log failed."""
        return self._lost + self._fallback.lost

    @property
    def spooled(self) -> int:
        return self._spooler.spooled if self._spooler is not None else 0

    @property
    def fallback(self) -> int:
        """Events handed to the fallback log (not acknowledged by the broker)."""
        return self._fallback.count

    @property
    def fallback_dir(self) -> Path | None:
        """The fallback directory (None: ``fallback=False``, or it cannot be created)."""
        return self._fallback.directory

    @property
    def subscriptions(self) -> int:
        """How often the broker subscribed: 1 at first connect, +1 at every restart."""
        return self._link.subscriptions

    @property
    def refusal(self) -> str:
        """Why the broker refused this learner, once it did ("" until then)."""
        return self._link.refusal

    @property
    def pending(self) -> int:
        """Events held locally, waiting for the broker or for room in the socket."""
        return len(self._box.pending)

    @property
    def unacked(self) -> int:
        """Events sent or waiting, not yet acknowledged by the broker."""
        self._box.trim(None)
        return len(self._box.unacked)

    def stats(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _STATS}

    # ------------------------------------------------------------ callbacks

    # Each callback builds its event and hands it to _emit itself (one call less than
    # the base class), marked as built here: the spool may write the dict as it is.

    def on_start(self, manifest: PipelineManifest) -> None:
        try:
            self._emit(start_event(self._context("start"), manifest), True)
        except Exception:
            self._internal_error("on_start")

    def on_iteration(self, state: IterationState) -> None:
        try:  # the hot path
            self._emit(iteration_event(self._context("iteration"), state), True)
        except Exception:
            self._internal_error("on_iteration")

    def on_stop(self, final_state: IterationState | None, reason: str) -> None:
        """The learner's loop ended: wait for the acks, put the rest in the fallback log."""
        try:
            self._emit(stop_event(self._context("stop"), final_state, reason), True)
        except Exception:
            self._internal_error("on_stop")
        try:
            if not self.flush():
                self._fall_back_unacked()
        except Exception:
            self._internal_error("flush", lost=False)

    def emit(self, event: dict[str, Any]) -> None:
        """Encode and send one event without blocking; never raises."""
        try:
            self._emit(event, False)
        except Exception:
            self._internal_error("emit")

    def _internal_error(self, where: str, lost: bool = True) -> None:
        self._lost += int(lost)
        self._problems(
            "internal",
            "BusTracker failed in %s; the event is dropped and the learner continues "
            "(further failures are counted in .dropped)",
            where,
            level=logging.ERROR,
            exc_info=True,
        )

    def _emit(self, event: dict[str, Any], built: bool) -> None:
        """The hot path: encode, keep, send; ``built``: the event is this tracker's own."""
        sock = self._sock
        run, seq, kind = event["run"], event["seq"], event["kind"]
        payload = encode(event)
        if len(payload) > self.max_event_bytes:
            self._oversize(event, payload, built)
            return
        if sock is None:
            self._fallback.after_close(event)
            return
        if self._spooler is not None:
            self._spooler.put(payload, event if built else None)
        box = self._box
        route = box.routes.get((run, kind))
        if route is None:
            if len(box.routes) > 64:
                box.routes.clear()
            route = box.routes[run, kind] = (topic_for(run, kind), header_prefix(run, kind))
            if run not in box.ack_keys:  # pruned in Outbox.trim once all is acknowledged
                box.ack_keys[run] = msgpack.packb(run)
        out = Out()  # no __init__ to call: the slots are filled here
        out.frames = frames = [route[0], route[1] + msgpack.packb(seq), payload]
        out.nbytes = len(frames[0]) + len(frames[1]) + len(payload)
        out.run, out.seq, out.sends, out.queued, out.done = run, seq, 0, False, False
        now = time.perf_counter()
        link = self._link
        if now >= self._next_check:  # what _check_broker does, one call less
            self._next_check = now + CHECK_INTERVAL_S
            link.check(sock)
            if box.trim_due:
                box.trim(TRIM_BATCH)
        if not link.subscribed and not self._waited:
            self._waited = True  # only the first event waits: start must not hit the slow joiner
            if sock.poll(self.start_wait_ms, zmq.POLLIN):
                link.read_incoming(sock)
        unacked = box.unacked
        unacked.append(out)
        box.unacked_bytes += out.nbytes
        if len(unacked) > self.max_pending or box.unacked_bytes > self.max_pending_bytes:
            self._spill()
        if link.subscribed and not box.pending and send_frames(sock, frames):
            out.sends = 1
            box.sent += 1
            return
        out.queued = True
        box.pending.append(out)
        if link.subscribed:
            box.drain(sock, time.perf_counter() + self.drain_budget_s)

    # ------------------------------------------------------------ what the broker says

    def _check_broker(self, sock: zmq.Socket) -> None:
        self._link.check(sock)
        if self._box.trim_due:
            self._box.trim(TRIM_BATCH)

    # ------------------------------------------------------------ the fallback log

    def _spill(self) -> None:
        """Over the memory bound: the oldest unacknowledged events go to the fallback log."""
        spill = self._box.over_bound(self.max_pending, self.max_pending_bytes)
        if spill:
            self._fallback.keep(spill, "the local buffer is full (broker down or too slow)")

    def _fall_back_unacked(self) -> None:
        """Move every unacknowledged event to the fallback log and say so once."""
        payloads = self._box.take_all()
        if payloads:
            self._fallback.keep(payloads, self._cause())
        self._fallback.report(self._cause())

    def _cause(self) -> str:
        return self._link.cause(self._waited_s)

    def _oversize(self, event: dict[str, Any], payload: bytes, built: bool) -> None:
        self.oversized += 1
        self._box.skipped.setdefault(event["run"], set()).add(event["seq"])
        self._fallback.put_oversized(event, payload, built, self.max_event_bytes)

    # ------------------------------------------------------------ flush and close

    def flush(self, timeout_ms: int | None = None) -> bool:
        """Send what is queued and wait until the broker acknowledged everything.

        Waits at most ``timeout_ms`` (default flush_timeout_ms), and at most
        ``unreachable_ms`` once the broker refuses the connection or the key.
        True when every event is acknowledged.
        """
        sock = self._sock
        if sock is None:
            return not self.unacked
        box, link = self._box, self._link
        timeout = self.flush_timeout_ms if timeout_ms is None else timeout_ms
        now = time.perf_counter()
        deadline = now + timeout / 1000
        self._waited_s = timeout / 1000
        started = time.monotonic()
        last_count, last_progress = -1, now
        while True:
            self._check_broker(sock)
            box.trim(None)
            if link.subscribed:
                box.drain(sock, deadline)
            unacked = box.unacked
            if not unacked:
                return True
            now = time.perf_counter()
            if now >= deadline:
                return False
            # A broker that refuses this learner, or that was never reached, is given
            # unreachable_ms (from this flush or the trouble, if later); one that was
            # there before and went away (a restart) gets the whole flush_timeout_ms.
            if (
                link.unreachable()
                and time.monotonic() - max(started, link.since) >= self.unreachable_s
            ):
                return False
            if len(unacked) != last_count:
                last_count, last_progress = len(unacked), now
            elif link.subscribed and not box.pending and now - last_progress >= ACK_RETRY_S:
                box.retry_head()  # an ack may have been dropped
                last_progress = now
            remaining_ms = (deadline - now) * 1000
            # Wake on an ack or a (re)subscription; otherwise retry a full socket soon.
            sock.poll(max(1, min(int(remaining_ms), 5)), zmq.POLLIN)

    def close(self, timeout_ms: int | None = None) -> None:
        """Wait (bounded) for the acks, put the rest in the fallback log, close; idempotent."""
        with self._lock:
            sock = self._sock
            if sock is None:
                return
            timeout = self.flush_timeout_ms if timeout_ms is None else timeout_ms
            try:
                flushed = self.flush(timeout)
            except Exception:
                log.exception("BusTracker flush failed at close")
                flushed = False
            if not flushed:
                self._fall_back_unacked()
            self._sock = None
            self._link.close(sock)
            sock.close(linger=0)  # everything is acknowledged or in the fallback log
            if self._own_ctx:
                self._ctx.term()
            if self._spooler is not None:
                self._spooler.close(max(1.0, timeout / 1000))
            self._fallback.report(self._cause())
            self._fallback.close(10.0)
            closed(self)
            if self.dropped:
                log.warning(
                    "BusTracker to %s closed: %d event(s) were dropped (sent %d, "
                    "acknowledged %d, in the fallback log %d, spooled %d)",
                    self.endpoint,
                    self.dropped,
                    self.sent,
                    self.acknowledged,
                    self.fallback,
                    self.spooled,
                )

    def __enter__(self) -> BusTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
