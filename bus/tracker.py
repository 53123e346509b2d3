"""BusTracker: the learner's side of the bus.

Every callback becomes one event, msgpack-encoded and sent on the learner's own
thread through a non-blocking XPUB socket connected to the broker's XSUB.  XPUB
(with XPUB_VERBOSE) tells the tracker when the broker subscribes: ``\\x01`` means
"broker up", at first connect and again after every broker restart.  Until
then, and whenever the socket's HWM is reached, events wait in a bounded local
queue; the most recent ``retain`` sent events are re-sent at every
(re)subscription, since messages in flight during a broker crash are lost and
the broker drops duplicates by (run, seq).  Whatever overflows the local queue
is dropped from the bus, counted and logged; with ``spool=`` every event is
also appended to a local JSONL event log (background thread, batched fsync),
so nothing is lost for ``rose replay``.

Why the send stays on the learner's thread: a Python consumer thread behind an
inproc socket starves on the GIL while the learner computes, which would turn HWM overflow
into the normal case.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import msgpack
import zmq

from bus.client import read_bus_file
from bus.security import client_curve
from bus.wire import header_prefix, topic_for
from rose.eventlog import EventLogWriter
from rose.events import EventTracker, decode, encode, iteration_event, to_json_line
from rose.tracking import IterationState, PipelineManifest

log = logging.getLogger(__name__)

DEFAULT_RETAIN = 2000
DEFAULT_MAX_PENDING = 100_000
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024
DEFAULT_SNDHWM = 10_000
DEFAULT_START_WAIT_MS = 200
DEFAULT_FLUSH_TIMEOUT_MS = 1000
DEFAULT_RECONNECT_IVL_MS = 10
DEFAULT_DRAIN_BUDGET_US = 2000
DEFAULT_SPOOL_SYNC_INTERVAL_S = 0.5
DEFAULT_SPOOL_MAX_QUEUE = 100_000
#: How often the tracker looks for broker disconnects and (re)subscriptions.
CHECK_INTERVAL_S = 0.001
#: Environment variable naming a bus file (or an endpoint) when neither argument is given.
ENV_BUS = "ROSE_BUS"

# Plain ints: pyzmq's flag enums cost more than the send itself on this path.
# pyzmq's Python-level Socket.send only adds routing-id/group handling that a PUB socket
# never uses; calling the Cython base method halves the cost of the three sends.
_zsend = zmq.backend.Socket.send
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _send(sock: zmq.Socket, frames: list[bytes]) -> bool:
    """Send one 3-frame message without blocking; False when the HWM is reached.

    ZeroMQ accepts a multipart message atomically: once its first frame is
    queued, the others are too, so only the first send can raise Again.
    """
    try:
        _zsend(sock, frames[0], _MORE)
    except zmq.Again:
        return False
    _zsend(sock, frames[1], _MORE)
    _zsend(sock, frames[2], _NOBLOCK)
    return True


class _Out:
    """One encoded event on its way out."""

    __slots__ = ("frames", "nbytes", "sends", "queued")

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.nbytes = len(frames[0]) + len(frames[1]) + len(frames[2])
        self.sends = 0
        self.queued = False


class _Spooler:
    """Appends encoded events to a JSONL event log from a background thread.

    The learner only appends bytes to a deque; JSON encoding, writing and the
    batched fsync happen here.  ``close`` drains, fsyncs and joins with a deadline.
    """

    def __init__(self, path: str | os.PathLike[str], sync_interval_s: float, max_queue: int):
        target = Path(path).expanduser()
        self.path = target
        # a directory: an existing one, or any path ending in "/" (as FileTracker reads it)
        self._per_run = target.is_dir() or str(path).endswith(("/", os.sep))
        if self._per_run:
            target.mkdir(parents=True, exist_ok=True)  # a bad path fails here, at construction
        self._writers: dict[str | None, EventLogWriter] = {}
        if not self._per_run:  # open now, so a bad path fails at construction, not later
            self._writers[None] = EventLogWriter(target)
        self._sync_interval_s = sync_interval_s
        self._max_queue = max_queue
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self.spooled = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="rose-bus-spool", daemon=True)
        self._thread.start()

    def put(self, payload: bytes) -> bool:
        if len(self._queue) >= self._max_queue:
            self.failed += 1
            if self.failed == 1:
                log.warning(
                    "spool %s is %d events behind (slow disk?): further events are not "
                    "spooled until it catches up",
                    self.path,
                    self._max_queue,
                )
            return False
        self._queue.append(payload)
        return True

    def _writer(self, run: str) -> EventLogWriter:
        key = run if self._per_run else None
        writer = self._writers.get(key)
        if writer is None:
            writer = self._writers[key] = EventLogWriter(self.path / f"{run}.jsonl")
        return writer

    def _run(self) -> None:
        last_sync = time.monotonic()
        dirty = False
        while True:
            self._wake.wait(0.05)
            self._wake.clear()
            stopping = self._stopping
            while self._queue:
                payload = self._queue.popleft()
                try:
                    event = decode(payload)
                    self._writer(event["run"]).append_line(to_json_line(event))
                    self.spooled += 1
                    dirty = True
                except Exception:
                    self.failed += 1
                    if self.failed == 1:
                        log.exception(
                            "writing to the spool %s failed; counting further failures", self.path
                        )
            now = time.monotonic()
            if dirty and (stopping or now - last_sync >= self._sync_interval_s):
                self._sync()
                dirty, last_sync = False, now
            if stopping and not self._queue:
                break
        for writer in self._writers.values():
            try:
                writer.close()
            except OSError:
                log.exception("closing the spool %s failed", writer.path)

    def _sync(self) -> None:
        for writer in list(self._writers.values()):
            try:
                writer.sync()
            except OSError:
                log.exception("fsync of the spool %s failed", writer.path)

    def close(self, timeout_s: float) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning(
                "spool %s: writer did not finish within %.1fs; %d event(s) may be missing",
                self.path,
                timeout_s,
                len(self._queue),
            )


_live: weakref.WeakSet[BusTracker] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    # One shared deadline: many trackers with the broker down must not add up their waits.
    trackers = list(_live)
    if not trackers:
        return
    budget_s = max(t.flush_timeout_ms for t in trackers) / 1000
    deadline = time.monotonic() + budget_s
    for tracker in trackers:
        left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
        tracker.close(timeout_ms=left_ms)


class BusTracker(EventTracker):
    """Publishes every tracker callback as an event to a ``rose bus`` broker.

    Contract: no callback blocks beyond a small bound or raises into the
    learner, whatever the broker and sinks are doing (down, slow, stopped,
    restarting).  The bounds: the very first event waits up to
    ``start_wait_ms`` for the broker's subscription (so ``start`` is not lost
    to the slow joiner); a backlog is drained for at most ``drain_budget_us``
    per callback; ``on_stop`` and ``close`` flush for at most
    ``flush_timeout_ms``.  Every other callback is an encode plus a
    non-blocking send.  Memory for unsent events is bounded by ``max_pending``
    / ``max_pending_bytes`` (plus the ``retain`` most recent events kept for
    re-sending); the rest is dropped from the bus and counted, and stays in
    the spool when ``spool=`` is given.

    Counters: ``sent`` (first sends), ``resent`` (re-sent after a broker
    (re)subscribed), ``spooled``, ``dropped`` (never reached the socket).
    Call it from one thread at a time (the learner's); ``close()`` is
    idempotent and also runs at interpreter exit.

    ``endpoint`` is the broker's frontend (``tcp://login:5555``); or pass
    ``bus=<store>/bus.json``; or set ROSE_BUS to either.

    CURVE (a broker started with ``--curve-secret-key``): ``server_key`` is the
    broker's public key (a key file or 40 z85 characters; read from bus.json
    when ``bus=`` is given, or from $ROSE_SERVER_KEY) and ``client_key`` this
    learner's ``NAME.key_secret`` file (or $ROSE_CLIENT_KEY), whose public half
    must be in the broker's authorized keys.  Key mistakes raise ValueError here.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        bus: str | os.PathLike[str] | None = None,
        spool: str | os.PathLike[str] | None = None,
        retain: int = DEFAULT_RETAIN,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        sndhwm: int = DEFAULT_SNDHWM,
        start_wait_ms: int = DEFAULT_START_WAIT_MS,
        flush_timeout_ms: int = DEFAULT_FLUSH_TIMEOUT_MS,
        reconnect_ivl_ms: int = DEFAULT_RECONNECT_IVL_MS,
        drain_budget_us: int = DEFAULT_DRAIN_BUDGET_US,
        spool_sync_interval_s: float = DEFAULT_SPOOL_SYNC_INTERVAL_S,
        context: zmq.Context | None = None,
        server_key: str | os.PathLike[str] | bytes | None = None,
        client_key: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if endpoint is not None and bus is not None:
            raise ValueError("BusTracker: give either an endpoint or bus=<bus.json>, not both")
        if endpoint is None and bus is None:
            env = os.environ.get(ENV_BUS)
            if not env:
                raise ValueError(
                    "BusTracker needs the broker: BusTracker('tcp://host:5555'), "
                    f"BusTracker(bus='<store>/bus.json'), or {ENV_BUS}=<bus.json or endpoint>"
                )
            if "://" in env:
                endpoint = env
            else:
                bus = env
        info = None
        if bus is not None:
            info = read_bus_file(bus)
            endpoint = info["frontend"]
        assert endpoint is not None
        curve = client_curve(server_key, client_key, bus_info=info)
        for name, value in (
            ("retain", retain),
            ("max_pending", max_pending),
            ("max_pending_bytes", max_pending_bytes),
            ("sndhwm", sndhwm),
        ):
            if value < 1:
                raise ValueError(f"BusTracker: {name} must be >= 1, got {value}")
        for name, value in (
            ("start_wait_ms", start_wait_ms),
            ("flush_timeout_ms", flush_timeout_ms),
            ("drain_budget_us", drain_budget_us),
        ):
            if value < 0:
                raise ValueError(f"BusTracker: {name} must be >= 0, got {value}")
        self.endpoint = endpoint
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.start_wait_ms = start_wait_ms
        self.flush_timeout_ms = flush_timeout_ms
        self.drain_budget_s = drain_budget_us / 1e6

        self.sent = 0
        self.resent = 0
        self.dropped = 0
        self.subscriptions = 0
        self._internal_errors = 0
        self._ring: collections.deque[_Out] = collections.deque(maxlen=retain)
        self._pending: collections.deque[_Out] = collections.deque()
        self._pending_bytes = 0
        self._subscribed = False
        self._waited = False
        self._next_check = 0.0
        self._routes: dict[tuple[str, str], tuple[bytes, bytes]] = {}

        self._own_ctx = context is None
        self._ctx = zmq.Context(io_threads=1) if context is None else context
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every (re)subscription of the broker
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # HWM reached: zmq.Again, not a silent drop
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.LINGER, flush_timeout_ms)
        sock.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, max(reconnect_ivl_ms, 1000))
        sock.setsockopt(zmq.MAXMSGSIZE, 4096)  # the broker only sends subscriptions
        if curve is not None:
            curve.apply(sock)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            if self._own_ctx:
                self._ctx.term()
            raise ValueError(f"BusTracker: bad endpoint {endpoint!r}: {exc}") from None
        self._sock: zmq.Socket | None = sock
        # Disconnects are how the tracker learns the broker went away: from then
        # on it queues locally until the broker subscribes again.
        self._monitor: zmq.Socket | None = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._spooler = (
            _Spooler(spool, spool_sync_interval_s, DEFAULT_SPOOL_MAX_QUEUE) if spool else None
        )
        self._lock = threading.Lock()  # only guards close() against a concurrent atexit
        _live.add(self)

    # ------------------------------------------------------------ counters

    @property
    def spooled(self) -> int:
        return self._spooler.spooled if self._spooler is not None else 0

    @property
    def pending(self) -> int:
        """Events held locally, waiting for the broker or for room in the socket."""
        return len(self._pending)

    def stats(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "resent": self.resent,
            "spooled": self.spooled,
            "dropped": self.dropped,
            "pending": self.pending,
            "subscriptions": self.subscriptions,
        }

    # ------------------------------------------------------------ callbacks

    def on_start(self, manifest: PipelineManifest) -> None:
        try:
            super().on_start(manifest)
        except Exception:
            self._internal_error("on_start")

    def on_iteration(self, state: IterationState) -> None:
        try:  # the hot path: one call less than the base class
            self._emit(iteration_event(self._context("iteration"), state))
        except Exception:
            self._internal_error("on_iteration")

    def on_stop(self, final_state: IterationState | None, reason: str) -> None:
        try:
            super().on_stop(final_state, reason)
        except Exception:
            self._internal_error("on_stop")
        try:
            self.flush()
        except Exception:
            self._internal_error("flush", lost=False)

    def emit(self, event: dict[str, Any]) -> None:
        """Encode and send one event without blocking; never raises."""
        try:
            self._emit(event)
        except Exception:
            self._internal_error("emit")

    def _internal_error(self, where: str, lost: bool = True) -> None:
        self._internal_errors += 1
        self.dropped += int(lost)
        if self._internal_errors == 1:
            log.exception(
                "BusTracker failed in %s; the event is dropped and the learner continues "
                "(further failures are counted in .dropped)",
                where,
            )

    def _emit(self, event: dict[str, Any]) -> None:
        sock = self._sock
        if sock is None:
            self._drop("the tracker is closed")
            return
        run, seq, kind = event["run"], event["seq"], event["kind"]
        payload = encode(event)
        if self._spooler is not None:
            self._spooler.put(payload)
        route = self._routes.get((run, kind))
        if route is None:
            if len(self._routes) > 64:
                self._routes.clear()
            route = self._routes[run, kind] = (topic_for(run, kind), header_prefix(run, kind))
        out = _Out([route[0], route[1] + msgpack.packb(seq), payload])
        now = time.perf_counter()
        if now >= self._next_check:
            self._next_check = now + CHECK_INTERVAL_S
            self._check_broker(sock)
        if not self._subscribed and not self._waited:
            self._waited = True  # only the first event waits: start must not hit the slow joiner
            if sock.poll(self.start_wait_ms, zmq.POLLIN):
                self._read_subscriptions(sock)
        if self._subscribed and not self._pending:
            frames = out.frames
            try:  # three sends cost less than send_multipart; see _send
                _zsend(sock, frames[0], _MORE)
            except zmq.Again:
                pass
            else:
                _zsend(sock, frames[1], _MORE)
                _zsend(sock, frames[2], _NOBLOCK)
                out.sends = 1
                self.sent += 1
                self._ring.append(out)
                return
        if (
            len(self._pending) >= self.max_pending
            or self._pending_bytes + out.nbytes > self.max_pending_bytes
        ):
            self._drop("the local buffer is full (broker down or too slow)")
            return
        out.queued = True
        self._pending.append(out)
        self._pending_bytes += out.nbytes
        self._ring.append(out)
        if self._subscribed:
            self._drain(sock, time.perf_counter() + self.drain_budget_s)

    def _check_broker(self, sock: zmq.Socket) -> None:
        mon = self._monitor
        if mon is not None and mon.get(_EVENTS) & _POLLIN:
            while mon.get(_EVENTS) & _POLLIN:
                frames = mon.recv_multipart(zmq.NOBLOCK)
                event = int.from_bytes(frames[0][:2], "little")
                if event == zmq.EVENT_DISCONNECTED and self._subscribed:
                    self._subscribed = False
                    log.info("lost the broker at %s: queueing events locally", self.endpoint)
        if sock.get(_EVENTS) & _POLLIN:
            self._read_subscriptions(sock)

    def _read_subscriptions(self, sock: zmq.Socket) -> None:
        subscribed = False
        while sock.get(_EVENTS) & _POLLIN:
            msg = sock.recv(zmq.NOBLOCK)
            if msg[:1] == b"\x01":
                subscribed = True
        if subscribed:
            self._on_subscribed()

    def _on_subscribed(self) -> None:
        """The broker (re)subscribed: queue the retained sent events again, oldest first."""
        self.subscriptions += 1
        self._subscribed = True
        again = [out for out in self._ring if not out.queued]
        for out in again:
            out.queued = True
            self._pending_bytes += out.nbytes
        self._pending.extendleft(reversed(again))
        if self.subscriptions > 1:
            log.info(
                "broker at %s subscribed again (restart?): re-sending %d recent event(s)",
                self.endpoint,
                len(again),
            )

    def _drain(self, sock: zmq.Socket, deadline: float) -> bool:
        """Send queued events until empty, HWM or ``deadline``; True when empty."""
        pending = self._pending
        n = 0
        while pending:
            out = pending[0]
            if not _send(sock, out.frames):
                return False
            pending.popleft()
            out.queued = False
            self._pending_bytes -= out.nbytes
            if out.sends:
                self.resent += 1
            else:
                self.sent += 1
            out.sends += 1
            n += 1
            if n % 32 == 0 and time.perf_counter() > deadline:
                return False
        return True

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if self.dropped == 1:
            where = (
                f"every event is also in the spool {self._spooler.path}"
                if self._spooler is not None
                else "they are lost (pass spool= to keep them on disk)"
            )
            log.warning(
                "BusTracker to %s: dropping events from the bus: %s; %s. "
                "Further drops are counted and summarized at close.",
                self.endpoint,
                why,
                where,
            )

    # ------------------------------------------------------------ flush and close

    def flush(self, timeout_ms: int | None = None) -> bool:
        """Send what is queued, waiting at most ``timeout_ms`` (default flush_timeout_ms).

        True when everything was handed to the socket with the broker subscribed.
        """
        sock = self._sock
        if sock is None:
            return not self._pending
        timeout = self.flush_timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.perf_counter() + timeout / 1000
        while True:
            self._check_broker(sock)
            if self._subscribed and self._drain(sock, deadline):
                return True
            remaining_ms = (deadline - time.perf_counter()) * 1000
            if remaining_ms <= 0:
                return False
            # Wake on a (re)subscription; otherwise retry a full socket every few ms.
            sock.poll(max(1, min(int(remaining_ms), 5)), zmq.POLLIN)

    def close(self, timeout_ms: int | None = None) -> None:
        """Flush (bounded), close the socket and the spool; idempotent."""
        with self._lock:
            sock = self._sock
            if sock is None:
                return
            timeout = self.flush_timeout_ms if timeout_ms is None else timeout_ms
            started = time.perf_counter()
            try:
                flushed = self.flush(timeout)
            except Exception:
                log.exception("BusTracker flush failed at close")
                flushed = False
            left_ms = max(0, int(timeout - (time.perf_counter() - started) * 1000))
            self._sock = None
            if self._monitor is not None:
                sock.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            # Let queued messages reach a live broker; with none, do not wait at all.
            sock.close(linger=max(left_ms, 100) if flushed else 0)
            if self._own_ctx:
                self._ctx.term()
            lost = len(self._pending)
            if lost:
                self.dropped += lost
                self._pending.clear()
                self._pending_bytes = 0
            if self._spooler is not None:
                self._spooler.close(max(1.0, timeout / 1000))
            _live.discard(self)
            if self.dropped:
                log.warning(
                    "BusTracker to %s closed: %d event(s) did not reach the broker "
                    "(sent %d, resent %d, spooled %d)%s",
                    self.endpoint,
                    self.dropped,
                    self.sent,
                    self.resent,
                    self.spooled,
                    f"; replay them with `rose replay {self._spooler.path} --publish ...`"
                    if self._spooler is not None
                    else "",
                )

    def __enter__(self) -> BusTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
