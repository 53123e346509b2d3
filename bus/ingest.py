"""The broker's event path: receive from learners, check, store, forward, acknowledge.

Each received event is checked from its topic and header alone (payloads are
never decoded), deduplicated by (run, seq), appended to the store, handed to
the OS and only then forwarded to sinks.  Bad frames are counted, the first of
each reason logged, the rest summarized at most every minute.

When the store cannot be written (disk full, quota, file size limit) the
events received are held, learners are not read from (their BusTrackers queue
and spool meanwhile), the failure is logged once and retried; once a write
goes through the held events are forwarded.

At most every ``fsync_interval_s`` the store is fsynced and each run that got
events (or a duplicate) since is acknowledged (:func:`bus.wire.make_acks`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import zmq

from bus.store import EventStore
from bus.wire import WireError, make_acks, parse_header
from rose.logonce import RepeatLog

log = logging.getLogger("bus.broker")  # the name its messages have in the log (docs/troubleshooting.md)

#: Messages handled per socket per loop turn, so no socket starves the others.
BATCH = 2000
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


class Ingest:
    """The events a broker receives, from the frontend socket to the store and the backend."""

    def __init__(self, store: EventStore, counters: Counters, *, max_event_bytes: int) -> None:
        self.store = store
        self.counters = counters
        self.max_event_bytes = max_event_bytes
        #: Rejected messages: the first of each reason logged, the rest summarized.
        self._rejects = RepeatLog(log)
        counters.rejected_by = self._rejects.counts  # type: ignore[assignment]
        self._store_errors = RepeatLog(log)  # fsync failures: the first one is logged
        #: Events received but not yet stored, while the store cannot be written.
        self.held: list[tuple[bytes, bytes, bytes]] = []
        self.store_error = ""
        self._store_failed_at = 0.0
        self.retry_at = 0.0
        #: Runs to acknowledge at the next fsync (new events or a duplicate since the last).
        self.to_ack: set[str] = set()
        self.ack_at = 0.0

    def sync(self, now: float) -> None:
        try:
            self.store.maybe_sync(now)
        except OSError as exc:  # data is with the OS; fsync is retried at the next interval
            self._fsync_failed(exc)

    def _fsync_failed(self, exc: OSError) -> None:
        self.counters.store_errors += 1
        self._store_errors("fsync", "fsync of the store %s failed: %s", self.store.dir, exc,
                           level=logging.ERROR)  # fmt: skip

    def acknowledge(self, front: zmq.Socket, now: float) -> None:
        """fsync the store, then tell learners how far each of their runs is stored."""
        self.ack_at = now + self.store.fsync_interval_s
        try:
            self.store.sync(now)
        except OSError as exc:  # nothing is acknowledged before it is on disk; retried
            self._fsync_failed(exc)
            return
        messages = make_acks(self.store.acks(self.to_ack))
        self.to_ack.clear()
        for msg in messages:
            # XSUB sends to every learner and drops for one whose queue is full: acks
            # are cumulative, and a learner missing one re-sends an event to get it again.
            with contextlib.suppress(zmq.ZMQError):
                front.send(msg, _NOBLOCK)
                self.counters.acks += 1

    def pump(self, front: zmq.Socket, back: zmq.Socket) -> None:
        # Hand-rolled recv/send with int flags: about twice as fast as
        # recv_multipart/send_multipart, which is what the 50k events/s target needs.
        if self.held:
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
            added = self.store.add(head.run, head.seq, head.kind, payload, header)
            self.to_ack.add(head.run)
            if added is None:
                c.duplicates += 1
                continue
            forward.append((topic, added[1], payload))
        if not forward:
            return
        self.held = forward
        self.store_held(back)

    def store_held(self, back: zmq.Socket) -> None:
        """Write the held events to the store, then forward them; on failure hold on."""
        c = self.counters
        forward = self.held
        try:
            self.store.write()  # the OS has every event before any sink hears of it
        except OSError as exc:
            self._store_failed(exc, len(forward))
            return
        if self.store_error:
            log.warning(
                "store %s is writable again after %.1fs: %d held event(s) stored; reading "
                "from learners again",
                self.store.dir,
                time.monotonic() - self._store_failed_at,
                len(forward),
            )
            self.store_error = ""
        self.held = []
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
        self.retry_at = now + STORE_RETRY_S
        if self.store_error:
            return  # reported when the episode began; the recovery is reported too
        self.store_error = f"{exc.strerror or exc} (errno {exc.errno})"
        self._store_failed_at = now
        log.error(
            "cannot write to the store %s: %s. Holding %d event(s) and not reading from "
            "learners until it can (their BusTrackers queue and spool meanwhile); retrying "
            "every %.1fs. Free some space or raise the quota.",
            self.store.dir,
            self.store_error,
            held,
            STORE_RETRY_S,
        )

    def drain_subscriptions(self, back: zmq.Socket) -> None:
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

    def log_rejects(self, now: float | None = None, final: bool = False) -> None:
        self._rejects.report(
            "rejected %d bad message(s) so far: %s",
            every_s=REJECT_LOG_INTERVAL_S,
            now=now,
            final=final,
        )
