"""Client side of the broker for sinks and tools: requests, catch-up and live follow.

``BusClient.subscribe(from_offset)`` is the one primitive a sink needs: it
yields every stored event with offset >= from_offset exactly once, in offset
order, first from the store, then live, re-fetching from the store whenever
the live stream skips an offset (a slow sink dropped by the broker's HWM, a
subscription that was not active yet, a broker restart).

Offsets mean something only within a store *generation* (every reply carries
it).  A subscriber whose position comes from another generation, or lies past
the store's head, re-reads from the last safe offset the broker names, skips
what it already delivered by (run, seq), and reports "the store lost N events
after offset X": a store that lost its tail never hides new events behind an
old position.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import msgpack
import zmq

from bus.security import ClientCurve, client_curve
from bus.wire import (
    DEFAULT_LIMIT,
    Arg,
    Op,
    StoredEvent,
    WireError,
    parse_header,
    parse_rows,
    read_bus_file,
    topic_for,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 5000
DEFAULT_IDLE_MS = 1000
SUB_HWM = 100_000
#: (run, seq) of this many recently delivered events are remembered, to skip them after a rewind.
RECENT_DELIVERED = 100_000
#: A live event older than the position makes the client check the generation at most this often.
GENERATION_CHECK_S = 0.5
#: ``head()`` answers from what the client knows when that is at most this old.
HEAD_MAX_AGE_S = 5.0


class BusError(RuntimeError):
    """The broker did not answer in time, or answered with an error."""


class StoreChangedError(BusError):
    """The broker now serves a different store (recreated): offsets no longer match."""


def _rows(rows: Any) -> list[StoredEvent]:
    try:
        return parse_rows(rows)
    except WireError as exc:
        raise BusError(f"malformed reply from the broker: {exc}") from None


class BusClient:
    """Talks to a broker's request endpoint (``replay``) and follows its ``backend``.

    Every request waits at most ``timeout_ms`` and raises BusError when the
    broker does not answer.  Not thread-safe: one client per thread.

    For a broker with CURVE, give ``server_key`` (its public key: a key file
    or 40 z85 characters; ``from_file`` reads it from bus.json) and
    ``client_key`` (this client's ``NAME.key_secret``), or set
    $ROSE_SERVER_KEY / $ROSE_CLIENT_KEY; key mistakes raise ValueError here.
    """

    def __init__(
        self,
        backend: str,
        replay: str,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        context: zmq.Context | None = None,
        server_key: str | os.PathLike[str] | bytes | None = None,
        client_key: str | os.PathLike[str] | None = None,
        bus_info: dict[str, Any] | None = None,
    ) -> None:
        self.backend = backend
        self.replay = replay
        self.timeout_ms = timeout_ms
        self.curve: ClientCurve | None = client_curve(server_key, client_key, bus_info=bus_info)
        self._ctx = context or zmq.Context.instance()
        self._req: zmq.Socket | None = None
        self._ids = itertools.count(1)
        self._subs: list[zmq.Socket] = []
        self._closed = False
        #: The store generation of the latest reply (None before the first one).
        self.generation: int | None = None
        #: The store's next offset as far as this client knows: the latest reply's, or
        #: past the newest live event; and when a reply last said it (monotonic).
        self._head: int | None = None
        self._head_at = float("-inf")

    @classmethod
    def from_file(cls, bus_json_path: str | os.PathLike[str], **kwargs: Any) -> BusClient:
        info = read_bus_file(bus_json_path)
        return cls(info["backend"], info["replay"], bus_info=info, **kwargs)

    # ------------------------------------------------------------ requests

    def _socket(self) -> zmq.Socket:
        if self._closed:
            raise BusError("client is closed")
        if self._req is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 50)
            sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024 * 1024)
            if self.curve is not None:
                self.curve.apply(sock)
            sock.connect(self.replay)
            self._req = sock
        return self._req

    def _reset(self) -> None:
        if self._req is not None:
            self._req.close(linger=0)
            self._req = None

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and wait (bounded) for its reply; BusError on timeout or error."""
        sock = self._socket()
        rid = next(self._ids)
        sock.send_multipart([b"", msgpack.packb({"op": op, "id": rid, **args})])
        remaining = self.timeout_ms
        deadline = _now_ms() + remaining
        while remaining > 0:
            if not sock.poll(remaining, zmq.POLLIN):
                break
            frames = sock.recv_multipart()
            remaining = deadline - _now_ms()
            try:
                reply = msgpack.unpackb(frames[-1], raw=False)
            except Exception:
                continue
            if not isinstance(reply, dict) or reply.get("id") != rid:
                continue  # a late answer to an earlier, timed-out request
            if not reply.get("ok"):
                raise BusError(f"broker refused {op!r}: {reply.get('error')}")
            if isinstance(reply.get("generation"), int):
                self.generation = reply["generation"]
            if isinstance(reply.get("next_offset"), int):
                self._head, self._head_at = reply["next_offset"], time.monotonic()
            return reply
        self._reset()  # drop queued requests so a returning broker does not answer stale ones
        hint = (
            "is `rose bus` running there, and is this client's public key in its "
            "--authorized-keys directory?"
            if self.curve is not None
            else "is `rose bus` running there?"
        )
        raise BusError(
            f"broker at {self.replay} did not answer {op!r} within {self.timeout_ms} ms ({hint})"
        )

    def store_id(self) -> str:
        return str(self.request(Op.HELLO)["store_id"])

    def fetch(self, from_offset: int, limit: int = DEFAULT_LIMIT) -> list[StoredEvent]:
        """Stored events with offset >= from_offset, in offset order (at most ``limit``)."""
        return _rows(self.request(Op.FETCH, **{Arg.FROM: from_offset, Arg.LIMIT: limit})["events"])

    def runs(self) -> list[dict[str, Any]]:
        """One summary per stored run: run, first_seq, last_seq, count, last_offset."""
        return list(self.request(Op.RUNS)["runs"])

    def run_events(self, run: str, from_seq: int = 0) -> list[StoredEvent]:
        """Every stored event of ``run`` with seq >= from_seq, in seq order."""
        out: list[StoredEvent] = []
        while True:
            args = {Arg.RUN: run, Arg.FROM_SEQ: from_seq, Arg.LIMIT: DEFAULT_LIMIT}
            reply = self.request(Op.RUN_EVENTS, **args)
            page = _rows(reply["events"])
            out.extend(page)
            if not reply.get("more") or not page:
                return out
            from_seq = page[-1].seq + 1

    def head(self, max_age_s: float = HEAD_MAX_AGE_S) -> int:
        """The store's next offset: from the replies and live events this client has seen,
        asking the broker (``hello``) only when the last answer is older than ``max_age_s``."""
        if self._head is None or time.monotonic() - self._head_at > max_age_s:
            self.request(Op.HELLO)
        if self._head is None:
            raise BusError(f"broker at {self.replay} did not say its next offset")
        return self._head

    def stats(self) -> dict[str, Any]:
        return dict(self.request(Op.STATS)["stats"])

    # ------------------------------------------------------------ following

    def subscribe(
        self,
        from_offset: int,
        prefix: str = "rose.",
        *,
        idle_timeout_ms: int = DEFAULT_IDLE_MS,
        batch: int = DEFAULT_LIMIT,
        generation: int | None = None,
        on_rewind: Callable[[dict[str, Any]], None] | None = None,
    ) -> Iterator[StoredEvent | None]:
        """Every stored event with offset >= from_offset, exactly once, in offset order.

        Catches up from the store, then follows live events (buffered by the
        SUB socket meanwhile), re-fetching from the store at any gap.  Yields
        None after ``idle_timeout_ms`` without events, so the caller can check
        for shutdown; while idle it also asks the store for anything the live
        stream missed.  An unreachable broker only means more Nones; a replaced
        store raises StoreChangedError.

        ``generation`` is the store generation ``from_offset`` belongs to (a
        checkpoint's).  When the store's differs, or the position is past its
        head, the subscription rewinds to the safe offset and skips events it
        already delivered by (run, seq); ``on_rewind(info)`` is told (info:
        ``offset`` re-read from, ``lost`` events, ``after`` offset,
        ``generation``), else the loss is logged.
        """
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, SUB_HWM)
        sub.setsockopt(zmq.RECONNECT_IVL, 50)
        sub.setsockopt(zmq.MAXMSGSIZE, 64 * 1024 * 1024)
        if self.curve is not None:
            self.curve.apply(sub)
        sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        sub.connect(self.backend)
        self._subs.append(sub)
        want = prefix.encode()
        next_offset = max(0, from_offset)
        store_id: str | None = None
        gen = generation
        recent: collections.deque[tuple[int, str, int]] = collections.deque(
            maxlen=RECENT_DELIVERED
        )
        seen: set[tuple[str, int]] = set()  # delivered before a rewind: skipped when re-read
        last_check = 0.0

        def check(reply: dict[str, Any]) -> bool:
            """Is the position still valid in this reply's store? Else rewind (True)."""
            nonlocal store_id, gen, next_offset, seen
            sid = str(reply.get("store_id"))
            if store_id is None:
                store_id = sid
            elif sid != store_id:
                raise StoreChangedError(
                    f"the broker's store changed from {store_id} to {sid}: "
                    "offsets from the old store do not apply"
                )
            g, head = reply.get("generation"), reply.get("next_offset")
            if not isinstance(g, int) or not isinstance(head, int):
                return False  # a broker without generations
            if (gen is None or g == gen) and next_offset <= head:
                gen = g
                return False
            safe, known = head, True
            if gen is not None and g != gen:
                recs = self.request(Op.HELLO).get("recoveries") or []
                newer = [r["safe_offset"] for r in recs if r.get("generation", 0) > gen]
                known = gen < g and any(r.get("generation") == gen + 1 for r in recs)
                safe = min(newer) if known and newer else 0
            new = min(next_offset, safe, head)
            lost = max(0, next_offset - min(safe if known else head, head))
            info = {
                "offset": new,
                "lost": lost,
                "after": new - 1,
                "from_offset": next_offset,
                "generation": g,
                "old_generation": gen,
            }
            seen |= {(run, seq) for off, run, seq in recent if off >= new}
            rewound = new != next_offset
            next_offset, gen = new, g
            if on_rewind is not None:
                on_rewind(info)
            elif lost:
                log.warning(
                    "the store lost %d event(s) after offset %d (generation %s, now %d); "
                    "re-reading from offset %d and skipping events already delivered",
                    lost,
                    new - 1,
                    info["old_generation"],
                    g,
                    new,
                )
            return rewound

        def deliver(ev: StoredEvent) -> bool:
            key = (ev.run, ev.seq)
            if seen and key in seen:
                return False
            recent.append((ev.offset, ev.run, ev.seq))
            return True

        def catch_up(until: int | None) -> Iterator[StoredEvent]:
            # Fetch from the store until caught up (or up to ``until``, exclusive).
            nonlocal next_offset
            while until is None or next_offset < until:
                reply = self.request(Op.FETCH, **{Arg.FROM: next_offset, Arg.LIMIT: batch})
                if check(reply):
                    until = None
                    continue  # the page was for the old position
                page = _rows(reply["events"])
                for ev in page:
                    if ev.offset < next_offset:
                        continue
                    if until is not None and ev.offset >= until:
                        return
                    next_offset = ev.offset + 1
                    if topic_for(ev.run, ev.kind).startswith(want) and deliver(ev):
                        yield ev
                if not page:
                    return

        def catch_up_or_later(warn: bool) -> Generator[StoredEvent, None, bool]:
            # A failed request is tried again later; a replaced store is not.
            try:
                yield from catch_up(None)
                return True
            except StoreChangedError:
                raise
            except BusError as exc:
                if warn:
                    log.warning("catch-up from %s failed (%s); will retry", self.replay, exc)
                return False

        try:
            if not (yield from catch_up_or_later(warn=True)):
                yield None
            while True:
                if not sub.poll(idle_timeout_ms, zmq.POLLIN):
                    yield from catch_up_or_later(warn=False)
                    yield None
                    continue
                frames = sub.recv_multipart()
                try:
                    if len(frames) != 3:
                        raise WireError("garbage", "expected 3 frames")
                    head = parse_header(frames[0], frames[1], need_offset=True)
                except WireError as exc:
                    log.warning("ignoring a malformed message from the broker: %s", exc)
                    continue
                offset = head.offset
                assert offset is not None
                if offset < next_offset:
                    # Already delivered from the store, or a store that lost its tail
                    # hands out these offsets again: its generation says which.
                    now = time.monotonic()
                    if now - last_check >= GENERATION_CHECK_S:
                        last_check = now
                        yield from catch_up_or_later(warn=False)
                    continue
                if offset > next_offset:
                    try:
                        yield from catch_up(offset)
                    except StoreChangedError:
                        raise
                    except BusError as exc:
                        log.warning("could not fill the gap before offset %d: %s", offset, exc)
                        yield None
                        continue  # the idle catch-up fills it later
                if offset != next_offset:
                    continue
                next_offset = offset + 1
                if self._head is None or next_offset > self._head:
                    self._head = next_offset
                ev = StoredEvent(offset, head.run, head.seq, head.kind, frames[2])
                if deliver(ev):
                    yield ev
        finally:
            sub.close(linger=0)
            if sub in self._subs:
                self._subs.remove(sub)

    def close(self) -> None:
        """Close every socket of this client (idempotent)."""
        self._reset()
        for sub in self._subs:
            sub.close(linger=0)
        self._subs.clear()
        self._closed = True

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _now_ms() -> int:
    return int(time.monotonic() * 1000)
