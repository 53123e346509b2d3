"""The broker's request endpoint: decode a request, answer it from the store, never die of it.

Requests and replies are the msgpack maps described in :mod:`bus.wire`
(operations :class:`~bus.wire.Op`, arguments :class:`~bus.wire.Arg`, stored
events as rows by :func:`~bus.wire.event_rows`).  A bad request gets an
``ok: False`` reply naming what is wrong and is counted; a malformed envelope
is counted and dropped.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from bus.wire import DEFAULT_LIMIT, MAX_OFFSET, Arg, Op, event_rows
from rose.events.identity import RUN_ID_RE
from rose.events.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from bus.broker import Broker
    from bus.store import EventStore

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
MAX_FETCH_LIMIT = 10_000
MAX_REPLY_BYTES = 8 * 1024 * 1024
#: Requests answered per loop turn, so learners' events are not held up.
REQUESTS_PER_TURN = 64


class BadRequest(Exception):
    """A request the broker cannot answer; its text goes back to the client."""


def int_arg(req: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = req.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{key} must be an int in [{lo}, {hi}]")
    return value


def serve(rep: zmq.Socket, store: EventStore, broker: Broker) -> None:
    """Answer the requests waiting on the ROUTER socket ``rep`` (a bounded number of them)."""
    counters = broker.counters
    for _ in range(REQUESTS_PER_TURN):
        try:
            frames = rep.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        counters.requests += 1
        if len(frames) != 3 or frames[1] != b"":
            counters.bad_requests += 1
            continue
        rid: Any = None
        try:
            req = msgpack.unpackb(frames[2], raw=False, strict_map_key=True)
            if not isinstance(req, dict):
                raise BadRequest("a request is a map")
            rid = req.get("id")
            if not (rid is None or isinstance(rid, (int, str))):
                rid = None
            reply = answer(req, store, broker)
        except BadRequest as exc:
            counters.bad_requests += 1
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # undecodable request, or a bug: never kill the broker
            counters.bad_requests += 1
            if not isinstance(exc, (ValueError, TypeError)):
                log.exception("request failed")
            reply = {"ok": False, "error": f"bad request: {type(exc).__name__}"}
        reply["id"] = rid
        # A client that is gone or not reading loses its reply; never block on it.
        with contextlib.suppress(zmq.ZMQError):
            rep.send_multipart([frames[0], b"", msgpack.packb(reply)], zmq.NOBLOCK)


def answer(req: dict, store: EventStore, broker: Broker) -> dict[str, Any]:
    """The reply map to one decoded request; BadRequest when it asks for something wrong."""
    op = req.get("op")
    base = {
        "ok": True,
        "store_id": store.store_id,
        "generation": store.generation,
        "next_offset": store.durable_offset,
    }
    if op == Op.HELLO:
        return {
            **base,
            "endpoints": dict(broker.endpoints),
            "v": SCHEMA_VERSION,
            "recoveries": [
                {"generation": r["generation"], "safe_offset": r["safe_offset"]}
                for r in store.recoveries
            ],
        }
    if op == Op.FETCH:
        start = int_arg(req, Arg.FROM, 0, 0, MAX_OFFSET)
        limit = int_arg(req, Arg.LIMIT, DEFAULT_LIMIT, 1, MAX_FETCH_LIMIT)
        return {**base, "events": event_rows(store.read(start, limit, MAX_REPLY_BYTES))}
    if op == Op.RUNS:
        return {**base, "runs": store.run_summaries()}
    if op == Op.RUN_EVENTS:
        run = req.get(Arg.RUN)
        if not isinstance(run, str) or not RUN_ID_RE.match(run):
            raise BadRequest("run must be a valid run id")
        from_seq = int_arg(req, Arg.FROM_SEQ, 0, 0, MAX_OFFSET)
        limit = int_arg(req, Arg.LIMIT, DEFAULT_LIMIT, 1, MAX_FETCH_LIMIT)
        offsets = store.run_offsets(run, from_seq)
        events = [store.read_one(o) for o in offsets[:limit]]
        return {**base, "events": event_rows(events), "more": len(offsets) > limit}
    if op == Op.STATS:
        return {**base, "stats": broker.stats(store)}
    raise BadRequest(f"unknown op {str(op)[:40]!r}")
