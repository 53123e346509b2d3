"""The tracker's outbox: every event from its send until the broker acknowledges it.

The broker acknowledges, per run, the highest contiguous stored seq
(:mod:`bus.wire`).  Until then an event is kept here (``unacked``, in emit
order) and, while it waits for the broker or for room in the socket, queued to
be sent (``pending``).  A (re)subscription queues every unacknowledged event
again; acknowledged ones are released from the head, a batch at a time.
Everything here runs on the learner's thread, without blocking.
"""

from __future__ import annotations

import collections
import time

import zmq

from bus.wire import parse_ack

# Plain ints: pyzmq's flag enums cost more than the send itself on this path.
# pyzmq's Python-level Socket.send only adds routing-id/group handling that a PUB socket
# never uses; calling the Cython base method halves the cost of the three sends.
_zsend = zmq.backend.Socket.send
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)

#: Beyond this many runs (a replay), forget the acks of old ones once all is acknowledged.
MAX_RUNS_KEPT = 64


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> bool:
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


class Out:
    """One encoded event, kept until the broker acknowledges it.

    No ``__init__``: the tracker's hot path fills the slots itself, which saves
    it a Python call per event.
    """

    __slots__ = ("frames", "nbytes", "run", "seq", "sends", "queued", "done")

    frames: list[bytes]  # topic, header, payload
    nbytes: int
    run: str
    seq: int
    sends: int
    queued: bool  # in the outbox's pending queue
    done: bool  # acknowledged, or handed to the fallback log


class Outbox:
    """Unacknowledged events, the queue of those waiting to be sent, and the acks."""

    def __init__(self) -> None:
        self.unacked: collections.deque[Out] = collections.deque()
        self.unacked_bytes = 0
        self.pending: collections.deque[Out] = collections.deque()
        self.acked: dict[str, int] = {}  # run -> every seq below is stored
        self.skipped: dict[str, set[int]] = {}  # seqs never sent (oversized), by run
        self.ack_keys: dict[str, bytes] = {}  # run -> its packed id, to spot our acks cheaply
        #: (run, kind) -> (topic, header prefix): built once per run and kind.
        self.routes: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self.trim_due = False
        self.sent = 0
        self.resent = 0
        self.acknowledged = 0

    def on_ack(self, msg: bytes) -> bool:
        """Take one acknowledgement; True when it names a run of ours."""
        # Every learner gets every ack: decode only one naming a run of ours.
        if not any(key in msg for key in self.ack_keys.values()):
            return False
        acked = self.acked
        for run, (upto, last, count) in parse_ack(msg).items():
            if run not in self.ack_keys:
                continue
            skipped = self.skipped.get(run)
            # stored events plus the ones never sent cover 0..last: all are stored
            if skipped and upto <= last and count + sum(s <= last for s in skipped) == last + 1:
                upto = last + 1
            if upto > acked.get(run, 0):
                acked[run] = upto
                self.trim_due = True
        return True

    def trim(self, limit: int | None) -> None:
        """Release acknowledged events from the head, at most ``limit`` of them."""
        unacked, acked = self.unacked, self.acked
        n = 0
        while unacked:
            out = unacked[0]
            if not out.done:
                if out.seq >= acked.get(out.run, 0):
                    break
                out.done = True
                self.acknowledged += 1
            unacked.popleft()
            self.unacked_bytes -= out.nbytes
            n += 1
            if limit is not None and n >= limit:
                return
        self.trim_due = False
        if not unacked and len(self.ack_keys) > MAX_RUNS_KEPT:
            self.ack_keys.clear()
            self.acked.clear()
            self.routes.clear()

    def requeue(self) -> int:
        """Queue every unacknowledged sent event again, in order (the broker subscribed)."""
        again = [out for out in self.unacked if not out.queued and not out.done]
        for out in again:
            out.queued = True
        self.pending.extendleft(reversed(again))
        return len(again)

    def retry_head(self) -> None:
        """Queue the oldest unacknowledged event again: a duplicate makes the broker re-ack."""
        head = next((o for o in self.unacked if not o.done), None)
        if head is not None and not head.queued:
            head.queued = True
            self.pending.appendleft(head)

    def drain(self, sock: zmq.Socket, deadline: float) -> bool:
        """Send queued events until empty, HWM or ``deadline``; True when empty."""
        pending = self.pending
        n = 0
        while pending:
            out = pending[0]
            if out.done:
                pending.popleft()
                out.queued = False
                continue
            if not send_frames(sock, out.frames):
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

    def over_bound(self, max_events: int, max_bytes: int) -> list[bytes]:
        """Give up the oldest unacknowledged events beyond the bounds; their payloads."""
        self.trim(None)
        unacked = self.unacked
        spill: list[bytes] = []
        while unacked and (len(unacked) > max_events or self.unacked_bytes > max_bytes):
            out = unacked.popleft()
            self.unacked_bytes -= out.nbytes
            if not out.done:
                out.done = True
                spill.append(out.frames[2])
        pending = self.pending
        while pending and pending[0].done:  # the oldest are also the first waiting to go
            pending.popleft().queued = False
        return spill

    def take_all(self) -> list[bytes]:
        """Give up every unacknowledged event; their payloads."""
        self.trim(None)
        payloads = [out.frames[2] for out in self.unacked if not out.done]
        for out in self.unacked:
            out.done = True
        self.unacked.clear()
        self.unacked_bytes = 0
        self.pending.clear()
        return payloads
