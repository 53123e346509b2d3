"""The bus wire format: what travels between learners, the broker and sinks.

A message is three ZeroMQ frames ``[topic, header, payload]``:

- ``topic``: ``rose.<run>.<kind>``, so subscribers can filter by prefix;
- ``header``: a tiny msgpack map ``{v, run, seq, kind}`` plus ``offset`` once
  the broker has stored the event; the broker routes, dedupes and stores from
  the topic and the header alone;
- ``payload``: ``rose.events.encode(event)``, never decoded by the broker.

Back up the learner's connection the broker sends acknowledgements, one
message ``ACK_MARK + msgpack {run: [upto, last, count]}``: every seq below
``upto`` of that run is in the store and fsynced, and so are ``count`` events
up to seq ``last``, which lets a learner that skipped a seq (an oversized
event) tell that everything else up to ``last`` is stored.  XSUB hands such a message to every connected
publisher; each one reads only its own runs.

Everything here is shared by the tracker, the broker, the store and the client,
so the three sides cannot drift apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from rose.events import KINDS, MAX_EVENT_BYTES, RUN_ID_RE, SCHEMA_VERSION

#: Default loopback endpoints of ``rose bus`` (learners, sinks, requests).
DEFAULT_FRONTEND = "tcp://127.0.0.1:5555"
DEFAULT_BACKEND = "tcp://127.0.0.1:5556"
DEFAULT_REPLAY = "tcp://127.0.0.1:5557"

#: The broker's connection file, written into its store directory.
BUS_FILE = "bus.json"
#: The store directory ``rose bus`` uses when none is given (relative to where it runs).
DEFAULT_STORE_DIR = "rose-store"
#: Where the broker is when no argument says: an endpoint or a bus file.
ENV_BUS = "ROSE_BUS"


class Op:
    """The operations of the broker's request endpoint (``{"op": ..., ...}`` → reply map)."""

    HELLO = "hello"  # store id, generation, next offset, endpoints, recoveries
    FETCH = "fetch"  # rows from an offset: {"from", "limit"}
    RUNS = "runs"  # one summary per stored run
    RUN_EVENTS = "run_events"  # rows of one run from a seq: {"run", "from_seq", "limit"}
    STATS = "stats"  # the broker's counters


#: A header larger than this is garbage: a real one is well under 200 bytes.
MAX_HEADER_BYTES = 512
#: A topic larger than this is garbage (``rose.`` + a 128-char run id + a kind).
MAX_TOPIC_BYTES = 160
#: Wire messages are checked against this payload size by default.
DEFAULT_MAX_EVENT_BYTES = MAX_EVENT_BYTES

#: First byte of an acknowledgement (subscriptions start with 0 or 1).
ACK_MARK = b"\x02"
#: Runs per acknowledgement message, so one message stays small.
ACK_MAX_RUNS = 1000

_KIND_SET = frozenset(KINDS)
_OFFSET_MAX = 2**63


class WireError(ValueError):
    """A frame set that is not a bus message; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Header(NamedTuple):
    run: str
    seq: int
    kind: str
    offset: int | None


def topic_for(run: str, kind: str) -> bytes:
    return f"rose.{run}.{kind}".encode()


def make_header(run: str, seq: int, kind: str, offset: int | None = None) -> bytes:
    head: dict[str, Any] = {"v": SCHEMA_VERSION, "run": run, "seq": seq, "kind": kind}
    if offset is not None:
        head["offset"] = offset
    return msgpack.packb(head)


def header_prefix(run: str, kind: str) -> bytes:
    """A header without its seq value: ``prefix + msgpack.packb(seq)`` is a full header.

    Lets a publisher pack the per-run part once instead of once per event.
    """
    parts = ("v", SCHEMA_VERSION, "run", run, "kind", kind, "seq")
    return b"\x84" + b"".join(msgpack.packb(p) for p in parts)


def stored_header_prefix(run: str, kind: str) -> bytes:
    """Like header_prefix, for a 5-key header: append packb(seq), packb("offset"), packb(offset)."""
    parts = ("v", SCHEMA_VERSION, "run", run, "kind", kind, "seq")
    return b"\x85" + b"".join(msgpack.packb(p) for p in parts)


def make_ack(acks: dict[str, tuple[int, int, int]]) -> bytes:
    """One acknowledgement message: {run: (upto, last, count)}, see the module docstring."""
    return ACK_MARK + msgpack.packb(acks)


def parse_ack(msg: bytes) -> dict[str, tuple[int, int, int]]:
    """The {run: (upto, last, count)} of an acknowledgement; malformed entries are ignored."""
    try:
        acks = msgpack.unpackb(msg[1:], raw=False, strict_map_key=True)
    except Exception:
        return {}
    if not isinstance(acks, dict):
        return {}
    return {
        r: (v[0], v[1], v[2])
        for r, v in acks.items()
        if isinstance(r, str) and isinstance(v, list) and len(v) == 3 and all(map(_is_int, v))
    }


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(topic: bytes, header: bytes, *, need_offset: bool = False) -> Header:
    """Check a topic and header pair; raise WireError naming what is wrong.

    Cheap and bounded on hostile input: sizes are checked before decoding and
    the run id must match the same pattern that makes it safe for file names.
    """
    if len(topic) > MAX_TOPIC_BYTES:
        raise WireError("garbage", "topic too large")
    head = decode_header(header, need_offset=need_offset)
    if topic != topic_for(head.run, head.kind):
        raise WireError("garbage", "topic does not match header")
    return head


def decode_header(header: bytes, *, need_offset: bool = False) -> Header:
    """Decode and check a header on its own (the store keeps headers without topics)."""
    if len(header) > MAX_HEADER_BYTES:
        raise WireError("garbage", "header too large")
    try:
        head = msgpack.unpackb(header, raw=False, strict_map_key=True)
    except Exception as exc:
        raise WireError("garbage", f"undecodable header: {type(exc).__name__}") from None
    if not isinstance(head, dict):
        raise WireError("garbage", "header is not a map")
    v = head.get("v")
    if v != SCHEMA_VERSION or isinstance(v, bool):
        raise WireError("version", f"schema version {str(v)[:20]!r}, expected {SCHEMA_VERSION}")
    run, seq, kind = head.get("run"), head.get("seq"), head.get("kind")
    if not isinstance(run, str) or not RUN_ID_RE.match(run):
        raise WireError("bad_run", f"invalid run id {str(run)[:40]!r}")
    if not _is_int(seq) or not 0 <= seq < _OFFSET_MAX:
        raise WireError("garbage", f"invalid seq {str(seq)[:20]!r}")
    if not isinstance(kind, str) or kind not in _KIND_SET:
        raise WireError("garbage", f"invalid kind {str(kind)[:20]!r}")
    offset = head.get("offset")
    if offset is not None and (not _is_int(offset) or not 0 <= offset < _OFFSET_MAX):
        raise WireError("garbage", f"invalid offset {str(offset)[:20]!r}")
    if need_offset and offset is None:
        raise WireError("garbage", "header has no offset")
    return Header(run, seq, kind, offset)


def is_endpoint(value: str) -> bool:
    """True for a ZeroMQ endpoint (``tcp://…``, ``ipc://…``), False for a file path."""
    return "://" in value


def locate_bus(given: str | os.PathLike[str] | None = None, *, default_store: bool = False) -> str | None:
    """Where the broker is, by one rule for every client: learners, sinks and tools.

    ``given`` (an argument), else ``$ROSE_BUS``, else, when ``default_store``,
    ``./rose-store/bus.json`` if it exists; None when nothing says.  The answer
    is an endpoint or a bus file path (see :func:`is_endpoint`).
    """
    if given:
        return os.fspath(given)
    env = os.environ.get(ENV_BUS, "").strip()
    if env:
        return env
    default = Path(DEFAULT_STORE_DIR) / BUS_FILE
    if default_store and default.is_file():
        return str(default)
    return None


def read_bus_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a broker's connection file (``<store>/bus.json``); ValueError says what is wrong."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / BUS_FILE
    try:
        info = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"no bus file at {p}: start the broker first (`rose bus --store {p.parent}`) "
            "or pass its endpoints explicitly"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{p} is not a valid bus file: {exc}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{p} is not a valid bus file: not a JSON object")
    missing = [k for k in ("frontend", "backend", "replay") if not isinstance(info.get(k), str)]
    if missing:
        raise ValueError(f"{p} is not a valid bus file: missing {', '.join(missing)}")
    return info
