"""The broker: receives events from learners, stores them durably, forwards them to sinks.

Three sockets, all bound by the broker:

- frontend (XSUB, learners connect their BusTracker): the broker subscribes to
  everything at once, so a learner's XPUB sees ``\\x01`` as "broker up";
- backend (XPUB, sinks connect a SUB): every *new* event, with its offset in the
  header, after it reached the store;
- replay (ROUTER, BusClient connects a DEALER): catch-up and status requests.

Each received event is checked from its topic and header alone (payloads are
never decoded), deduplicated by (run, seq), appended to the store, handed to
the OS and only then forwarded.  Bad frames are counted, logged once per kind
with a count, and skipped.

Acknowledgements: at most every ``fsync_interval_s`` the broker fsyncs the store
and sends up the frontend, for each run that got events (or a duplicate) since
the last time, the highest contiguous stored seq (:func:`bus.wire.make_ack`):
one small message per interval for all learners, never one per event.  A
duplicate is acknowledged again, so a learner that missed an ack gets it by
re-sending one event.

When the store cannot be written (disk full, quota, file size limit) the
broker holds the events it has, stops reading from learners (their
BusTrackers queue and spool meanwhile), keeps answering requests from what is
on disk, says so once in the log and in ``stats``, and retries; once the write
goes through it forwards what it held and reads on.

With ``curve_secret_key`` and ``authorized_keys`` every socket is a CURVE
server: traffic is encrypted and only clients whose public key is in the
authorized-keys directory get anything in or out (:mod:`bus.security`).

``Broker`` is only the logic; ``Broker.run()`` blocks in whatever thread calls
it until ``stop()``.  ``BrokerThread`` runs it in a thread (tests, demos, embedded
use); ``rose bus`` runs it in the main thread of its own process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from bus.requests import serve
from bus.security import RELOAD_INTERVAL_S, Authorizer, CurveError, KeyPair, load_keypair
from bus.sockets import BrokerError, bind, raise_open_files_limit, write_bus_file
from bus.store import DEFAULT_FSYNC_INTERVAL_S, DEFAULT_SEGMENT_BYTES, EventStore
from bus.wire import (
    ACK_MAX_RUNS,
    BUS_FILE,
    DEFAULT_BACKEND,
    DEFAULT_FRONTEND,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_REPLAY,
    WireError,
    make_ack,
    parse_header,
)
from rose.logonce import RepeatLog

log = logging.getLogger(__name__)

#: Name of the connection file the broker writes into its store directory.
DEFAULT_HWM = 100_000
#: Messages handled per socket per loop turn, so no socket starves the others.
BATCH = 2000
POLL_MS = 100
#: Rejected-message summaries are logged at most this often.
REJECT_LOG_INTERVAL_S = 60.0
#: While the store cannot be written, retry this often.
STORE_RETRY_S = 0.5


_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)


@dataclass
class Counters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    forwarded: int = 0
    requests: int = 0
    bad_requests: int = 0
    rejected_by: dict[str, int] = field(default_factory=dict)
    store_errors: int = 0  # failed store writes (each failure episode retries many times)
    acks: int = 0  # acknowledgement messages sent to learners


class Broker:
    """Broker logic: bind, then serve until ``stop()``.  See the module docstring."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        frontend: str = DEFAULT_FRONTEND,
        backend: str = DEFAULT_BACKEND,
        replay: str = DEFAULT_REPLAY,
        *,
        hwm: int = DEFAULT_HWM,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S,
        new_store_id: bool = False,
        write_bus_file: bool = True,
        curve_secret_key: str | os.PathLike[str] | None = None,
        authorized_keys: str | os.PathLike[str] | None = None,
    ) -> None:
        if hwm <= 0 or not 0 < max_event_bytes <= DEFAULT_MAX_EVENT_BYTES:
            # learners never send more than the system's one limit; a lower one is for tests
            raise ValueError(
                f"hwm must be positive and max_event_bytes in [1, {DEFAULT_MAX_EVENT_BYTES}]"
            )
        self.curve: KeyPair | None = None
        self.authorizer: Authorizer | None = None
        if (curve_secret_key is None) != (authorized_keys is None):
            raise CurveError(
                "CURVE needs both the broker's secret key (--curve-secret-key FILE) and the "
                "directory of the clients' public keys (--authorized-keys DIR)"
            )
        if curve_secret_key is not None and authorized_keys is not None:
            self.curve = load_keypair(curve_secret_key, "broker secret key file")
            self.authorizer = Authorizer(authorized_keys)
        self.store_dir = Path(store_dir)
        self.requested = {"frontend": frontend, "backend": backend, "replay": replay}
        self.hwm = hwm
        self.max_event_bytes = max_event_bytes
        self.segment_bytes = segment_bytes
        self.fsync_interval_s = fsync_interval_s
        self.new_store_id = new_store_id
        self.write_bus_file = write_bus_file
        self.counters = Counters()
        self.endpoints: dict[str, str] = {}
        self.store_id = ""
        #: Set once the sockets are bound and bus.json is written (or startup failed).
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._started = time.time()
        #: Rejected messages: the first of each reason logged, the rest summarized.
        self._rejects = RepeatLog(log)
        self.counters.rejected_by = self._rejects.counts  # type: ignore[assignment]
        self._store: EventStore | None = None
        #: Events received but not yet stored, while the store cannot be written.
        self._held: list[tuple[bytes, bytes, bytes]] = []
        self._store_error = ""
        self._store_failed_at = 0.0
        self._store_retry_at = 0.0
        self._next_key_check = 0.0
        #: Runs to acknowledge at the next fsync (new events or a duplicate since the last).
        self._to_ack: set[str] = set()
        self._ack_at = 0.0

    @property
    def bus_file(self) -> Path:
        return self.store_dir / BUS_FILE

    def stop(self) -> None:
        """Ask ``run()`` to flush and return; safe from any thread and from signal handlers."""
        self._stopping.set()

    # ------------------------------------------------------------ lifecycle

    def run(self, on_ready: Callable[[Broker], None] | None = None) -> None:
        """Bind, serve until ``stop()``, then flush the store and close everything.

        ``on_ready(broker)`` runs once the endpoints are bound and bus.json is written.
        """
        raise_open_files_limit()
        ctx: zmq.Context | None = None
        sockets: list[zmq.Socket] = []
        try:
            self._store = EventStore(
                self.store_dir,
                segment_bytes=self.segment_bytes,
                fsync_interval_s=self.fsync_interval_s,
                new_store_id=self.new_store_id,
            )
            self.store_id = self._store.store_id
            ctx = zmq.Context()
            if self.authorizer is not None:
                self.authorizer.start(ctx)
            front, back, rep, self.endpoints = bind(
                ctx, sockets, self.requested, hwm=self.hwm, max_event_bytes=self.max_event_bytes,
                curve=self.curve,
            )  # fmt: skip
            if self.write_bus_file:
                self._write_bus_file()
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            self._close(ctx, sockets)
            raise
        log.info(
            "broker up: learners -> %s, sinks -> %s, requests -> %s, store %s (id %s)%s",
            self.endpoints["frontend"],
            self.endpoints["backend"],
            self.endpoints["replay"],
            self.store_dir,
            self.store_id,
            "" if self.curve is None else f", CURVE key {self.curve.public.decode()}",
        )
        self.ready.set()
        try:
            if on_ready is not None:
                on_ready(self)
            self._loop(front, back, rep)
        finally:
            self._close(ctx, sockets)
            self._log_rejects(final=True)
            log.info(
                "broker stopped: received %d, stored %d, duplicates %d, rejected %d",
                self.counters.received,
                self.counters.stored,
                self.counters.duplicates,
                self.counters.rejected,
            )

    def _write_bus_file(self) -> None:
        generation = self._store.generation if self._store is not None else 0
        write_bus_file(self.bus_file, self.endpoints, self.store_id, generation, self.curve)

    def _close(self, ctx: zmq.Context | None, sockets: list[zmq.Socket]) -> None:
        for sock in sockets:
            sock.close(linger=0)
        if self._store is not None:
            unstored = self._store.buffered
            try:
                self._store.close()
            except OSError as exc:
                log.error(
                    "closing the store %s failed: %s; %d received event(s) were not stored "
                    "(learners re-send their recent events to the next broker)",
                    self.store_dir,
                    exc.strerror or exc,
                    unstored,
                )
            self._store = None
        if self.authorizer is not None:
            self.authorizer.stop()  # its ZAP socket must close before the context ends
        if ctx is not None:
            ctx.term()

    # ------------------------------------------------------------ serving

    def _loop(self, front: zmq.Socket, back: zmq.Socket, rep: zmq.Socket) -> None:
        store = self._store
        assert store is not None
        poller = zmq.Poller()
        for sock in (front, back, rep):
            poller.register(sock, zmq.POLLIN)
        reading = True
        while not self._stopping.is_set():
            timeout = POLL_MS
            if self._to_ack:  # wake for the next acknowledgement
                timeout = max(1, min(POLL_MS, int((self._ack_at - time.monotonic()) * 1000) + 1))
            ready = dict(poller.poll(timeout))
            now = time.monotonic()
            if self._held and now >= self._store_retry_at:
                self._store_held(back, store)
            if front in ready:
                self._pump(front, back, store)
            if back in ready:
                self._drain_subscriptions(back)
            if rep in ready:
                serve(rep, store, self)
            if reading == bool(self._held):  # hold back learners while the store fails
                reading = not self._held
                if reading:
                    poller.register(front, zmq.POLLIN)
                else:
                    poller.unregister(front)
            now = time.monotonic()
            if not self._held:
                if self._to_ack and now >= self._ack_at:
                    self._acknowledge(front, store, now)
                else:
                    self._sync(store, now)
            if self.counters.rejected:
                self._log_rejects(now=now)
            if self.authorizer is not None and now >= self._next_key_check:
                self._next_key_check = now + RELOAD_INTERVAL_S
                self.authorizer.maybe_reload()

    def _sync(self, store: EventStore, now: float) -> None:
        try:
            store.maybe_sync(now)
        except OSError as exc:  # data is with the OS; fsync is retried at the next interval
            self.counters.store_errors += 1
            if self.counters.store_errors == 1:
                log.error("fsync of the store %s failed: %s", self.store_dir, exc)

    def _acknowledge(self, front: zmq.Socket, store: EventStore, now: float) -> None:
        """fsync the store, then tell learners how far each of their runs is stored."""
        self._ack_at = now + self.fsync_interval_s
        try:
            store.sync(now)
        except OSError as exc:  # nothing is acknowledged before it is on disk; retried
            self.counters.store_errors += 1
            if self.counters.store_errors == 1:
                log.error("fsync of the store %s failed: %s", self.store_dir, exc)
            return
        runs = store.runs
        acks = {}
        for r in self._to_ack:
            idx = runs.get(r)
            if idx is not None:
                acks[r] = (idx.upto, idx.last_seq, idx.count)
        self._to_ack.clear()
        items = list(acks.items())
        for i in range(0, len(items), ACK_MAX_RUNS):
            # XSUB sends to every learner and drops for one whose queue is full: acks
            # are cumulative, and a learner missing one re-sends an event to get it again.
            with contextlib.suppress(zmq.ZMQError):
                front.send(make_ack(dict(items[i : i + ACK_MAX_RUNS])), _NOBLOCK)
                self.counters.acks += 1

    def _pump(self, front: zmq.Socket, back: zmq.Socket, store: EventStore) -> None:
        # Hand-rolled recv/send with int flags: about twice as fast as
        # recv_multipart/send_multipart, which is what the 50k events/s target needs.
        if self._held:
            return  # the store is failing: learners wait (bounded, on their side)
        c = self.counters
        forward: list[tuple[bytes, bytes, bytes]] = []
        limit = self.max_event_bytes
        recv, more = front.recv, front.get
        for _ in range(BATCH):
            try:
                topic = recv(_NOBLOCK)
            except zmq.Again:
                break
            frames = [topic]
            while more(_RCVMORE):
                frames.append(recv(_NOBLOCK))
            c.received += 1
            if len(frames) != 3:
                self._reject("garbage", f"{len(frames)} frame(s), expected 3")
                continue
            topic, header, payload = frames
            if len(payload) > limit:
                self._reject("oversized", f"payload of {len(payload)} bytes > {limit}")
                continue
            try:
                head = parse_header(topic, header)
            except WireError as exc:
                self._reject(exc.reason, str(exc))
                continue
            except Exception as exc:  # a bug in the checks must not take the broker down
                self._reject("garbage", f"unexpected {type(exc).__name__} checking a header")
                continue
            added = store.add(head.run, head.seq, head.kind, payload, header)
            self._to_ack.add(head.run)
            if added is None:
                c.duplicates += 1
                continue
            forward.append((topic, added[1], payload))
        if not forward:
            return
        self._held = forward
        self._store_held(back, store)

    def _store_held(self, back: zmq.Socket, store: EventStore) -> None:
        """Write the held events to the store, then forward them; on failure hold on."""
        c = self.counters
        forward = self._held
        try:
            store.write()  # the OS has every event before any sink hears of it
        except OSError as exc:
            self._store_failed(exc, len(forward))
            return
        if self._store_error:
            log.warning(
                "store %s is writable again after %.1fs: %d held event(s) stored; reading "
                "from learners again",
                self.store_dir,
                time.monotonic() - self._store_failed_at,
                len(forward),
            )
            self._store_error = ""
        self._held = []
        c.stored += len(forward)
        send = back.send
        for topic, header, payload in forward:
            # XPUB drops for slow sinks rather than block (no NODROP): they catch up
            # from the store, so a send never fails here.
            send(topic, _SNDMORE)
            send(header, _SNDMORE)
            send(payload, _NOBLOCK)
        c.forwarded += len(forward)

    def _store_failed(self, exc: OSError, held: int) -> None:
        self.counters.store_errors += 1
        now = time.monotonic()
        self._store_retry_at = now + STORE_RETRY_S
        if self._store_error:
            return  # reported when the episode began; the recovery is reported too
        self._store_error = f"{exc.strerror or exc} (errno {exc.errno})"
        self._store_failed_at = now
        log.error(
            "cannot write to the store %s: %s. Holding %d event(s) and not reading from "
            "learners until it can (their BusTrackers queue and spool meanwhile); retrying "
            "every %.1fs. Free some space or raise the quota.",
            self.store_dir,
            self._store_error,
            held,
            STORE_RETRY_S,
        )

    def _drain_subscriptions(self, back: zmq.Socket) -> None:
        for _ in range(BATCH):
            try:
                back.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _reject(self, reason: str, detail: str) -> None:
        self.counters.rejected += 1
        self._rejects(
            reason,
            "rejected a message from a learner (%s: %s); further ones are counted "
            "and summarized at most every %ds",
            reason,
            detail,
            int(REJECT_LOG_INTERVAL_S),
        )

    def _log_rejects(self, now: float | None = None, final: bool = False) -> None:
        self._rejects.report(
            "rejected %d bad message(s) so far: %s",
            every_s=REJECT_LOG_INTERVAL_S,
            now=now,
            final=final,
        )

    def stats(self, store: EventStore | None = None) -> dict[str, Any]:
        """Counters and per-run progress (served to ``rose status`` and tests)."""
        store = store or self._store
        c = self.counters  # each counter under its own name
        runs = {} if store is None else {r: i.last_seq for r, i in store.runs.items()}
        return {
            **dataclasses.asdict(c),
            "store_error": self._store_error,
            "held": len(self._held),
            "auth_denied": 0 if self.authorizer is None else self.authorizer.denied,
            "curve": self.curve is not None,
            "events": 0 if store is None else store.durable_offset,
            "runs": runs,
            "store_id": self.store_id,
            "generation": 0 if store is None else store.generation,
            "recovered": [] if store is None else [
                {"first": d.first, "last": d.last, "bytes": d.nbytes, "quarantine": d.quarantine}
                for d in store.damage
            ],
            "endpoints": dict(self.endpoints),
            "pid": os.getpid(),
            "uptime_s": time.time() - self._started,
        }


class BrokerThread:
    """Run a Broker in a background thread: ``with BrokerThread(dir) as b: b.frontend ...``.

    Endpoints default to random free loopback ports; the bound ones are in
    ``frontend``, ``backend``, ``replay`` and in ``bus_file``.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        frontend: str = "tcp://127.0.0.1:*",
        backend: str = "tcp://127.0.0.1:*",
        replay: str = "tcp://127.0.0.1:*",
        **options: Any,
    ) -> None:
        self.broker = Broker(store_dir, frontend, backend, replay, **options)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> BrokerThread:
        self._thread = threading.Thread(target=self._run, name="rose-bus-broker", daemon=True)
        self._thread.start()
        if not self.broker.ready.wait(timeout):
            self.stop()
            raise BrokerError(f"broker did not start within {timeout}s")
        if self.broker.error is not None:
            raise BrokerError(str(self.broker.error)) from self.broker.error
        return self

    def _run(self) -> None:
        try:
            self.broker.run()
        except Exception:
            if self.broker.error is None:
                log.exception("broker thread failed")

    def stop(self, timeout: float = 10.0) -> None:
        self.broker.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("broker thread did not stop within %.1fs", timeout)

    @property
    def frontend(self) -> str:
        return self.broker.endpoints["frontend"]

    @property
    def backend(self) -> str:
        return self.broker.endpoints["backend"]

    @property
    def replay(self) -> str:
        return self.broker.endpoints["replay"]

    @property
    def bus_file(self) -> Path:
        return self.broker.bus_file

    @property
    def store_id(self) -> str:
        return self.broker.store_id

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "Broker",
    "BrokerError",
    "BrokerThread",
    "Counters",
    "raise_open_files_limit",
]
