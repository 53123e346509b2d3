"""BusTracker: the learner's side of the bus.

Every callback becomes one event, msgpack-encoded and sent on the learner's own
thread through a non-blocking XPUB socket connected to the broker's XSUB.  XPUB
(with XPUB_VERBOSE) tells the tracker when the broker subscribes: ``\\x01`` means
"broker up", at first connect and again after every broker restart.

Delivery is acknowledged: the broker sends up the same socket, at every fsync,
the highest contiguous stored seq of each run (:mod:`bus.wire`).  The tracker
keeps every event until it is acknowledged (bounded memory; beyond the bound
the oldest go to the fallback log on disk), re-sends the unacknowledged ones
at every (re)subscription, and ``flush``/``close`` wait, boundedly, for the
acknowledgement of everything.  Whatever is still unacknowledged when the
learner's loop ends or the tracker closes goes to the fallback event log
(default :func:`default_fallback_dir`), and one warning says how many events,
where, and the ``rose replay ... --publish`` command that delivers them.
``fallback=False`` opts out (events are then dropped, counted and warned).

An event larger than the system's one size limit (``MAX_EVENT_BYTES``) is never
sent: the broker would refuse it.  It is kept whole in the fallback log (a
``.oversized.jsonl`` file) with a warning naming the state key that made it big.

Why the send and the ack reading stay on the learner's thread: a Python thread
behind an inproc socket starves on the GIL, which would turn HWM overflow into
the normal case.  Acks and socket monitor events (disconnects, CURVE refusals)
are read opportunistically, at most every millisecond, with non-blocking calls.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from bus.security import client_curve
from bus.wire import (
    ACK_MARK,
    ENV_BUS,
    header_prefix,
    is_endpoint,
    locate_bus,
    parse_ack,
    read_bus_file,
    topic_for,
)
from rose.eventlog import EventLogWriter
from rose.events import (
    MAX_EVENT_BYTES,
    EventTracker,
    _ext_hook,
    decode,
    encode,
    iteration_event,
    to_json_line,
    validate,
)
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
#: Environment variable naming a bus file (or an endpoint) when neither argument is given.
#: Environment variable naming the fallback directory.
ENV_FALLBACK = "ROSE_FALLBACK_DIR"

# Plain ints: pyzmq's flag enums cost more than the send itself on this path.
# pyzmq's Python-level Socket.send only adds routing-id/group handling that a PUB socket
# never uses; calling the Cython base method halves the cost of the three sends.
_zsend = zmq.backend.Socket.send
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_MONITORED = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def default_fallback_dir() -> Path:
    """Where unacknowledged events go by default: ``$ROSE_FALLBACK_DIR``, else
    ``$XDG_STATE_HOME/rose-tracking/fallback`` (``~/.local/state/rose-tracking/fallback``).
    """
    env = os.environ.get(ENV_FALLBACK)
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
    return Path(state).expanduser() / "rose-tracking" / "fallback"


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
    """One encoded event, kept until the broker acknowledges it."""

    __slots__ = ("frames", "nbytes", "run", "seq", "sends", "queued", "done")

    def __init__(self, frames: list[bytes], run: str, seq: int) -> None:
        self.frames = frames
        self.nbytes = len(frames[0]) + len(frames[1]) + len(frames[2])
        self.run = run
        self.seq = seq
        self.sends = 0
        self.queued = False
        self.done = False  # acknowledged, or handed to the fallback log


def _size(value: Any, depth: int = 0) -> int:
    """About how many bytes a value takes encoded, without encoding it."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if depth < 4 and isinstance(value, dict):
        return sum(len(str(k)) + _size(v, depth + 1) for k, v in value.items())
    if depth < 4 and isinstance(value, (list, tuple)):
        return sum(_size(v, depth + 1) for v in value)
    return 9


def biggest_key(event: dict[str, Any]) -> tuple[str, int]:
    """The path of the largest value in an event's body (``state['x']``) and its size."""
    value: Any = event.get("body")
    path = ""
    while isinstance(value, dict) and value:
        key, item = max(value.items(), key=lambda kv: _size(kv[1]))
        path = f"{path}[{key!r}]" if path else str(key)
        value = item
        if not isinstance(value, dict) or _size(value) < 1024:
            break
    return path or "body", _size(value)


class _Spooler:
    """Appends encoded events to a JSONL event log from a background thread.

    The learner only appends bytes to a deque; decoding, JSON encoding, writing
    and the batched fsync happen here.  ``settle`` waits until everything put
    is written and fsynced; ``close`` drains, fsyncs and joins with a deadline.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sync_interval_s: float,
        max_queue: int | None,
        *,
        per_run: bool | None = None,
    ):
        target = Path(path).expanduser()
        self.path = target
        # a directory: an existing one, or any path ending in "/" (as FileTracker reads it)
        if per_run is None:
            per_run = target.is_dir() or str(path).endswith(("/", os.sep))
        self._per_run = per_run
        if self._per_run:
            target.mkdir(parents=True, exist_ok=True)  # a bad path fails here, at construction
        self._writers: dict[str | None, EventLogWriter] = {}
        if not self._per_run:  # open now, so a bad path fails at construction, not later
            self._writers[None] = EventLogWriter(target)
        self._sync_interval_s = sync_interval_s
        self._max_queue = max_queue
        self._queue: collections.deque[tuple[bytes, str]] = collections.deque()
        self._wake = threading.Event()
        self._settled = threading.Event()
        self._settle = False
        self._stopping = False
        self.spooled = 0
        self.failed = 0
        #: Files written, by run (the log itself when not per run).
        self.files: dict[str, Path] = {}
        self._thread = threading.Thread(target=self._run, name="rose-bus-spool", daemon=True)
        self._thread.start()

    def put(self, payload: bytes, suffix: str = "") -> bool:
        """Queue one encoded event; ``suffix`` names a side file (``.oversized``)."""
        if self._max_queue is not None and len(self._queue) >= self._max_queue:
            self.failed += 1
            if self.failed == 1:
                log.warning(
                    "spool %s is %d events behind (slow disk?): further events are not "
                    "spooled until it catches up",
                    self.path,
                    self._max_queue,
                )
            return False
        self._queue.append((payload, suffix))
        return True

    def _writer(self, run: str, suffix: str) -> EventLogWriter:
        key = run + suffix if self._per_run else None
        writer = self._writers.get(key)
        if writer is None:
            path = self.path / f"{run}{suffix}.jsonl"
            writer = self._writers[key] = EventLogWriter(path)
        self.files.setdefault(run + suffix, writer.path)
        return writer

    def _run(self) -> None:
        last_sync = time.monotonic()
        dirty = False
        while True:
            self._wake.wait(0.05)
            self._wake.clear()
            stopping, settle = self._stopping, self._settle
            while self._queue:
                payload, suffix = self._queue.popleft()
                try:
                    if suffix:  # larger than decoders accept: the learner's own bytes
                        event = validate(
                            msgpack.unpackb(
                                payload, raw=False, strict_map_key=True, ext_hook=_ext_hook
                            )
                        )
                    else:
                        event = decode(payload)
                    self._writer(event["run"], suffix).append_line(to_json_line(event))
                    self.spooled += 1
                    dirty = True
                except Exception:
                    self.failed += 1
                    if self.failed == 1:
                        log.exception(
                            "writing to the event log %s failed; counting further failures",
                            self.path,
                        )
            now = time.monotonic()
            if dirty and (stopping or settle or now - last_sync >= self._sync_interval_s):
                self._sync()
                dirty, last_sync = False, now
            if settle and not self._queue:
                self._settle = False
                self._settled.set()
            if stopping and not self._queue:
                break
        for writer in self._writers.values():
            try:
                writer.close()
            except OSError:
                log.exception("closing the event log %s failed", writer.path)

    def _sync(self) -> None:
        for writer in list(self._writers.values()):
            try:
                writer.sync()
            except OSError:
                log.exception("fsync of the event log %s failed", writer.path)

    def settle(self, timeout_s: float) -> bool:
        """Wait until everything put so far is written and fsynced."""
        self._settled.clear()
        self._settle = True
        self._wake.set()
        return self._settled.wait(timeout_s)

    def close(self, timeout_s: float) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning(
                "event log %s: writer did not finish within %.1fs; %d event(s) may be missing",
                self.path,
                timeout_s,
                len(self._queue),
            )


#: Every open tracker, strongly held: a tracker created inline and dropped by the
#: learner must still be closed (and warn) at interpreter exit.
_live: set[BusTracker] = set()
_live_lock = threading.Lock()


@atexit.register
def _close_all_at_exit() -> None:
    # One shared deadline: many trackers with the broker down must not add up their waits.
    with _live_lock:
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
    restarting), and no event is lost without a warning saying where it is.
    The bounds: the very first event waits up to ``start_wait_ms`` for the
    broker's subscription (so ``start`` is not lost to the slow joiner); a
    backlog is drained for at most ``drain_budget_us`` per callback;
    ``on_stop`` and ``close`` wait for acknowledgements at most
    ``flush_timeout_ms``, and at most ``unreachable_ms`` while a broker never
    reached refuses the connection, or the broker refuses this learner's key.  Every other callback is an
    encode plus a non-blocking send.

    Unacknowledged events are held in memory up to ``max_pending`` events /
    ``max_pending_bytes``; beyond that the oldest go to the fallback log.
    ``fallback`` is the fallback directory (default :func:`default_fallback_dir`,
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
        if endpoint is not None and bus is not None:
            raise ValueError("BusTracker: give either an endpoint or bus=<bus.json>, not both")
        if endpoint is None and bus is None:
            where = locate_bus()
            if where is None:
                raise ValueError(
                    "BusTracker needs the broker: BusTracker('tcp://host:5555'), "
                    f"BusTracker(bus='<store>/bus.json'), or {ENV_BUS}=<bus.json or endpoint>"
                )
            if is_endpoint(where):
                endpoint = where
            else:
                bus = where
        info = None
        if bus is not None:
            info = read_bus_file(bus)
            endpoint = info["frontend"]
        assert endpoint is not None
        curve = client_curve(server_key, client_key, bus_info=info)
        for name, value in (
            ("max_pending", max_pending),
            ("max_pending_bytes", max_pending_bytes),
            ("sndhwm", sndhwm),
        ):
            if value < 1:
                raise ValueError(f"BusTracker: {name} must be >= 1, got {value}")
        for name, value in (
            ("start_wait_ms", start_wait_ms),
            ("flush_timeout_ms", flush_timeout_ms),
            ("unreachable_ms", unreachable_ms),
            ("drain_budget_us", drain_budget_us),
        ):
            if value < 0:
                raise ValueError(f"BusTracker: {name} must be >= 0, got {value}")
        if fallback is True or fallback is None:
            fallback_dir: Path | None = default_fallback_dir()
        elif fallback is False:
            fallback_dir = None
        else:
            fallback_dir = Path(fallback).expanduser()
            if fallback_dir.exists() and not fallback_dir.is_dir():
                raise ValueError(f"BusTracker: fallback={fallback!s} is not a directory")
        self.endpoint = endpoint
        #: What ``rose replay --publish`` needs to reach this broker again.
        self._publish_target = str(bus) if bus is not None else endpoint
        self._client_key = None if client_key is None else str(client_key)
        self.fallback_dir = fallback_dir
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.start_wait_ms = start_wait_ms
        self.flush_timeout_ms = flush_timeout_ms
        self.unreachable_s = unreachable_ms / 1000
        self.drain_budget_s = drain_budget_us / 1e6
        self.max_event_bytes = MAX_EVENT_BYTES

        self.sent = 0
        self.resent = 0
        self.acknowledged = 0
        self.dropped = 0
        self.oversized = 0
        self.subscriptions = 0
        self._fallback_count = 0  # events handed to the fallback log
        self._reported = 0  # ... of which the user was told
        self._closed_warned = False
        self._waited_s = 0.0  # the last flush's budget, for the warning
        self._internal_errors = 0
        self._unacked: collections.deque[_Out] = collections.deque()
        self._unacked_bytes = 0
        self._pending: collections.deque[_Out] = collections.deque()
        self._acked: dict[str, int] = {}
        self._skipped: dict[str, set[int]] = {}  # seqs never sent (oversized), by run
        self._ack_keys: dict[str, bytes] = {}  # run -> its packed id, to spot our acks cheaply
        self._trim_due = False
        self._subscribed = False
        self._waited = False
        self._next_check = 0.0
        self._routes: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        # What the socket monitor told: "" (nothing yet), "connected", "retrying", "refused".
        self._link = ""
        self._link_since = time.monotonic()
        self.refusal = ""  # why the broker refused this learner, once it did
        self._fallback: _Spooler | None = None

        self._own_ctx = context is None
        self._ctx = zmq.Context(io_threads=1) if context is None else context
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every (re)subscription of the broker
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # HWM reached: zmq.Again, not a silent drop
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.LINGER, 0)  # close() waits for acks, not for the socket
        sock.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, max(reconnect_ivl_ms, 1000))
        sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # the broker only sends subscriptions and acks
        if curve is not None:
            curve.apply(sock)
        # Before connect, so the monitor sees the first connection attempt.
        self._monitor: zmq.Socket | None = sock.get_monitor_socket(_MONITORED)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            self._monitor.close(linger=0)
            sock.close(linger=0)
            if self._own_ctx:
                self._ctx.term()
            raise ValueError(f"BusTracker: bad endpoint {endpoint!r}: {exc}") from None
        self._sock: zmq.Socket | None = sock
        self._spooler = (
            _Spooler(spool, spool_sync_interval_s, DEFAULT_SPOOL_MAX_QUEUE) if spool else None
        )
        self._lock = threading.Lock()  # only guards close() against a concurrent atexit
        with _live_lock:
            _live.add(self)

    # ------------------------------------------------------------ counters

    @property
    def spooled(self) -> int:
        return self._spooler.spooled if self._spooler is not None else 0

    @property
    def fallback(self) -> int:
        """Events handed to the fallback log (not acknowledged by the broker)."""
        return self._fallback_count

    @property
    def pending(self) -> int:
        """Events held locally, waiting for the broker or for room in the socket."""
        return len(self._pending)

    @property
    def unacked(self) -> int:
        """Events sent or waiting, not yet acknowledged by the broker."""
        self._trim(None)
        return len(self._unacked)

    def stats(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "resent": self.resent,
            "acknowledged": self.acknowledged,
            "fallback": self.fallback,
            "spooled": self.spooled,
            "dropped": self.dropped,
            "oversized": self.oversized,
            "pending": self.pending,
            "unacked": self.unacked,
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
        """The learner's loop ended: wait for the acks, put the rest in the fallback log."""
        try:
            super().on_stop(final_state, reason)
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
        run, seq, kind = event["run"], event["seq"], event["kind"]
        payload = encode(event)
        if len(payload) > self.max_event_bytes:
            self._oversize(event, payload)
            return
        if sock is None:
            self._after_close(event)
            return
        if self._spooler is not None:
            self._spooler.put(payload)
        route = self._routes.get((run, kind))
        if route is None:
            if len(self._routes) > 64:
                self._routes.clear()
            route = self._routes[run, kind] = (topic_for(run, kind), header_prefix(run, kind))
            if run not in self._ack_keys:  # pruned in _trim once all is acknowledged
                self._ack_keys[run] = msgpack.packb(run)
        out = _Out([route[0], route[1] + msgpack.packb(seq), payload], run, seq)
        now = time.perf_counter()
        if now >= self._next_check:
            self._next_check = now + CHECK_INTERVAL_S
            self._check_broker(sock)
        if not self._subscribed and not self._waited:
            self._waited = True  # only the first event waits: start must not hit the slow joiner
            if sock.poll(self.start_wait_ms, zmq.POLLIN):
                self._read_incoming(sock)
        unacked = self._unacked
        unacked.append(out)
        self._unacked_bytes += out.nbytes
        if len(unacked) > self.max_pending or self._unacked_bytes > self.max_pending_bytes:
            self._spill()
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
                return
        out.queued = True
        self._pending.append(out)
        if self._subscribed:
            self._drain(sock, time.perf_counter() + self.drain_budget_s)

    def _check_broker(self, sock: zmq.Socket) -> None:
        mon = self._monitor
        if mon is not None and mon.get(_EVENTS) & _POLLIN:
            self._read_monitor(mon)
        if sock.get(_EVENTS) & _POLLIN:
            self._read_incoming(sock)
        if self._trim_due:
            self._trim(TRIM_BATCH)

    def _read_monitor(self, mon: zmq.Socket) -> None:
        while mon.get(_EVENTS) & _POLLIN:
            frames = mon.recv_multipart(zmq.NOBLOCK)
            event = int.from_bytes(frames[0][:2], "little")
            value = int.from_bytes(frames[0][2:6], "little")
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._set_link("connected")
            elif event == zmq.EVENT_CONNECTED:  # TCP only: a refused key reconnects too
                if self._link != "refused":
                    self._set_link("connected")
            elif event == zmq.EVENT_CONNECT_RETRIED:
                if self._link != "refused":
                    self._set_link("retrying")
            elif event == zmq.EVENT_DISCONNECTED:
                if self._link != "refused":
                    self._set_link("retrying")
                if self._subscribed:
                    self._subscribed = False
                    log.info("lost the broker at %s: keeping events locally", self.endpoint)
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._refused(
                    f"the broker refused this learner's CURVE key (status {value}): add its "
                    "public key to the broker's authorized keys directory"
                )
            elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self._refused(
                    f"the security handshake failed (ZMTP protocol error {value:#x}): is the "
                    "server key the broker's, and do both sides use CURVE?"
                )
            elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._refused(
                    f"the handshake with the broker failed ({zmq.strerror(value)}): wrong "
                    "server key, or a broker without CURVE?"
                )

    def _set_link(self, link: str) -> None:
        if link != self._link:
            self._link = link
            self._link_since = time.monotonic()

    def _refused(self, cause: str) -> None:
        self._set_link("refused")
        if not self.refusal:
            self.refusal = cause
            log.warning(
                "BusTracker to %s: %s. Events are kept locally and go to the fallback log.",
                self.endpoint,
                cause,
            )

    def _read_incoming(self, sock: zmq.Socket) -> None:
        """Subscriptions (``\\x01``: broker up) and acknowledgements, without blocking."""
        subscribed = False
        while sock.get(_EVENTS) & _POLLIN:
            msg = sock.recv(zmq.NOBLOCK)
            first = msg[:1]
            if first == b"\x01":
                subscribed = True
            elif first == ACK_MARK:
                self._on_ack(msg)
        if subscribed:
            self._on_subscribed()

    def _on_ack(self, msg: bytes) -> None:
        # Every learner gets every ack: decode only one naming a run of ours.
        if not any(key in msg for key in self._ack_keys.values()):
            return
        acked = self._acked
        for run, (upto, last, count) in parse_ack(msg).items():
            if run not in self._ack_keys:
                continue
            skipped = self._skipped.get(run)
            # stored events plus the ones never sent cover 0..last: all are stored
            if skipped and upto <= last and count + sum(s <= last for s in skipped) == last + 1:
                upto = last + 1
            if upto > acked.get(run, 0):
                acked[run] = upto
                self._trim_due = True
        if self._link != "connected":
            self._set_link("connected")

    def _trim(self, limit: int | None) -> None:
        """Release acknowledged events from the head, at most ``limit`` of them."""
        unacked, acked = self._unacked, self._acked
        n = 0
        while unacked:
            out = unacked[0]
            if not out.done:
                if out.seq >= acked.get(out.run, 0):
                    break
                out.done = True
                self.acknowledged += 1
            unacked.popleft()
            self._unacked_bytes -= out.nbytes
            n += 1
            if limit is not None and n >= limit:
                return
        self._trim_due = False
        if not unacked and len(self._ack_keys) > 64:  # many runs (a replay): forget old ones
            self._ack_keys.clear()
            self._acked.clear()
            self._routes.clear()

    def _on_subscribed(self) -> None:
        """The broker (re)subscribed: queue every unacknowledged sent event again, in order."""
        self.subscriptions += 1
        self._subscribed = True
        self._set_link("connected")
        again = [out for out in self._unacked if not out.queued and not out.done]
        for out in again:
            out.queued = True
        self._pending.extendleft(reversed(again))
        if self.subscriptions > 1 and again:
            log.info(
                "broker at %s subscribed again (restart?): re-sending %d unacknowledged event(s)",
                self.endpoint,
                len(again),
            )

    def _drain(self, sock: zmq.Socket, deadline: float) -> bool:
        """Send queued events until empty, HWM or ``deadline``; True when empty."""
        pending = self._pending
        n = 0
        while pending:
            out = pending[0]
            if out.done:
                pending.popleft()
                out.queued = False
                continue
            if not _send(sock, out.frames):
                return False
            pending.popleft()
            out.queued = False
            if out.sends:
                self.resent += 1
            else:
                self.sent += 1
            out.sends += 1
            n += 1
            if n % 32 == 0 and time.perf_counter() > deadline:
                return False
        return True

    # ------------------------------------------------------------ the fallback log

    def _spill(self) -> None:
        """Over the memory bound: the oldest unacknowledged events go to the fallback log."""
        self._trim(None)
        unacked = self._unacked
        spill: list[bytes] = []
        while unacked and (
            len(unacked) > self.max_pending or self._unacked_bytes > self.max_pending_bytes
        ):
            out = unacked.popleft()
            self._unacked_bytes -= out.nbytes
            if not out.done:
                out.done = True
                spill.append(out.frames[2])
        pending = self._pending
        while pending and pending[0].done:  # the oldest are also the first waiting to go
            pending.popleft().queued = False
        if spill:
            self._to_fallback(spill, "the local buffer is full (broker down or too slow)")

    def _fallback_spooler(self) -> _Spooler | None:
        if self._fallback is None and self.fallback_dir is not None:
            try:
                self._fallback = _Spooler(
                    self.fallback_dir, DEFAULT_SPOOL_SYNC_INTERVAL_S, None, per_run=True
                )
            except OSError as exc:
                log.error("cannot create the fallback directory %s: %s", self.fallback_dir, exc)
                self.fallback_dir = None
        return self._fallback

    def _to_fallback(self, payloads: list[bytes], why: str, suffix: str = "") -> None:
        spooler = self._fallback_spooler()
        if spooler is None:
            self._drop(len(payloads), why)
            return
        for payload in payloads:
            spooler.put(payload, suffix)
        if not suffix:
            self._fallback_count += len(payloads)

    def _fall_back_unacked(self) -> None:
        """Move every unacknowledged event to the fallback log and say so once."""
        self._trim(None)
        payloads = [out.frames[2] for out in self._unacked if not out.done]
        for out in self._unacked:
            out.done = True
        self._unacked.clear()
        self._unacked_bytes = 0
        self._pending.clear()
        if payloads:
            self._to_fallback(payloads, self._cause())
        self._report()

    def _cause(self) -> str:
        if self.refusal:
            return self.refusal
        if not self.subscriptions:
            return (
                "the broker never answered: is `rose bus` running and reachable at "
                f"{self.endpoint}?"
            )
        return f"the broker did not acknowledge them within {self._waited_s:.1f}s"

    def _report(self, timeout_s: float = 10.0) -> None:
        """One warning for everything handed to the fallback log since the last one."""
        count = self._fallback_count - self._reported
        if count <= 0 or self._fallback is None:
            return
        self._reported = self._fallback_count
        written = self._fallback.settle(timeout_s)
        files = sorted(str(p) for k, p in self._fallback.files.items() if "." not in k)
        logs = " ".join(files) if files else str(self.fallback_dir)
        key = f" --client-key {self._client_key}" if self._client_key else ""
        log.warning(
            "BusTracker to %s: %d event(s) were not acknowledged by the broker (%s). "
            "They are %s the fallback log %s; deliver them with: "
            "rose replay %s --publish %s%s",
            self.endpoint,
            count,
            self._cause(),
            "in" if written else "still being written to",
            logs,
            logs,
            self._publish_target,
            key,
        )

    def _oversize(self, event: dict[str, Any], payload: bytes) -> None:
        self.oversized += 1
        self._skipped.setdefault(event["run"], set()).add(event["seq"])
        where, size = biggest_key(event)
        spooler = self._fallback_spooler()
        if spooler is not None:
            spooler.put(payload, ".oversized")
            kept = f"kept whole in {self.fallback_dir}/{event['run']}.oversized.jsonl"
        else:
            self.dropped += 1
            kept = "dropped (fallback=False)"
        log.warning(
            "BusTracker: %s event seq %d of run %s is %d bytes encoded, over the bus limit "
            "of %d bytes, so it is not sent (the broker would refuse it); %s. Most of it is "
            "%s (about %d bytes): log a summary of it, or save it as an artifact file.",
            event["kind"],
            event["seq"],
            event["run"],
            len(payload),
            self.max_event_bytes,
            kept,
            where,
            size,
        )

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        if self.dropped == n:
            log.warning(
                "BusTracker to %s: dropping events: %s, and fallback=False. "
                "Further drops are counted and summarized at close.",
                self.endpoint,
                why,
            )

    def _after_close(self, event: dict[str, Any]) -> None:
        """An event after close(): written to the fallback log at once (rare, not hot)."""
        if self.fallback_dir is None:
            self._drop(1, "the tracker is closed")
            return
        with EventLogWriter(self.fallback_dir / f"{event['run']}.jsonl") as writer:
            writer.append(event)
        self._fallback_count += 1
        self._reported += 1  # told here, not at a close that already happened
        if not self._closed_warned:
            self._closed_warned = True
            log.warning(
                "BusTracker to %s is closed: further events go to the fallback log %s; "
                "deliver them with: rose replay %s --publish %s",
                self.endpoint,
                writer.path,
                writer.path,
                self._publish_target,
            )

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
        timeout = self.flush_timeout_ms if timeout_ms is None else timeout_ms
        now = time.perf_counter()
        deadline = now + timeout / 1000
        self._waited_s = timeout / 1000
        started = time.monotonic()
        last_count, last_progress = -1, now
        while True:
            self._check_broker(sock)
            self._trim(None)
            if self._subscribed:
                self._drain(sock, deadline)
            unacked = self._unacked
            if not unacked:
                return True
            now = time.perf_counter()
            if now >= deadline:
                return False
            # A broker that refuses this learner, or that was never reached, is given
            # unreachable_ms (from this flush or the trouble, if later); one that was
            # there before and went away (a restart) gets the whole flush_timeout_ms.
            if (
                self._link == "refused" or (self._link == "retrying" and not self.subscriptions)
            ) and time.monotonic() - max(started, self._link_since) >= self.unreachable_s:
                return False
            if len(unacked) != last_count:
                last_count, last_progress = len(unacked), now
            elif self._subscribed and not self._pending and now - last_progress >= ACK_RETRY_S:
                # an ack may have been dropped: a duplicate makes the broker ack again
                head = next((o for o in unacked if not o.done), None)
                if head is not None and not head.queued:
                    head.queued = True
                    self._pending.appendleft(head)
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
            if self._monitor is not None:
                sock.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            sock.close(linger=0)  # everything is acknowledged or in the fallback log
            if self._own_ctx:
                self._ctx.term()
            if self._spooler is not None:
                self._spooler.close(max(1.0, timeout / 1000))
            self._report()
            if self._fallback is not None:
                self._fallback.close(10.0)
            with _live_lock:
                _live.discard(self)
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
