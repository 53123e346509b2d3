"""The bus protocol: what travels between learners, the broker, its store and sinks.

Everything both sides of a socket agree on is defined here and nowhere else,
so the sides cannot drift apart: the tracker, the broker, the store, the client
and the sink sources import these names instead of spelling bytes or strings.

Events.  A message is three ZeroMQ frames ``[topic, header, payload]``:

- ``topic``: :func:`topic_for` ``rose.<run>.<kind>``, so subscribers filter by prefix;
- ``header``: a tiny msgpack map ``{v, run, seq, kind}`` (:func:`header_prefix`
  plus the packed seq), to which the broker adds ``offset`` once the event is
  stored (:func:`with_offset`); the broker routes, dedupes and stores from the
  topic and the header alone, checked once by :func:`parse_header`;
- ``payload``: ``rose.events.encode(event)``, never decoded by the broker.

Acknowledgements.  Back up the learner's connection the broker sends one
message ``ACK_MARK + msgpack {run: [upto, last, count]}``: every seq below
``upto`` of that run is in the store and fsynced, and so are ``count`` events
up to seq ``last``, which lets a learner that skipped a seq (an oversized
event) tell that everything else up to ``last`` is stored.  XSUB hands such a
message to every connected publisher; each one reads only its own runs.

Requests.  The broker's request endpoint takes ``{"op": Op.X, "id": n, ...}``
with the arguments named in :class:`Arg` and answers a map with ``ok``,
``id``, ``store_id``, ``generation`` and ``next_offset``.  Stored events
travel in replies as rows ``[offset, run, seq, kind, payload]``
(:func:`event_rows` builds them, :func:`parse_rows` checks them into
:class:`StoredEvent` s).

Location.  A broker writes its endpoints to ``<store>/bus.json``
(:data:`BUS_FILE`); every client finds it by :func:`locate_bus`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from rose.events.identity import RUN_ID_RE
from rose.events.msgpack_codec import decode
from rose.events.schema import KINDS, MAX_EVENT_BYTES, SCHEMA_VERSION, EventError

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


#: Rows per reply when a request does not say (``Arg.LIMIT``).
DEFAULT_LIMIT = 1000
#: The largest offset or seq (both are non-negative signed 64-bit ints).
MAX_OFFSET = 2**63 - 1


class Arg:
    """The argument names of requests (beside ``op`` and ``id``)."""

    FROM = "from"  # FETCH: the first offset wanted
    LIMIT = "limit"  # FETCH, RUN_EVENTS: rows per reply at most
    RUN = "run"  # RUN_EVENTS: the run id
    FROM_SEQ = "from_seq"  # RUN_EVENTS: the first seq wanted


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
    """A whole header (tests, tools); publishers use :func:`header_prefix` per run."""
    header = header_prefix(run, kind) + msgpack.packb(seq)
    if offset is None:
        return header
    return with_offset(header, run, seq, kind, offset)


def header_prefix(run: str, kind: str) -> bytes:
    """A header without its seq value: ``prefix + msgpack.packb(seq)`` is a full header.

    Lets a publisher pack the per-run part once instead of once per event.
    """
    parts = ("v", SCHEMA_VERSION, "run", run, "kind", kind, "seq")
    return b"\x84" + b"".join(msgpack.packb(p) for p in parts)


_PLAIN_HEADER = b"\x84\xa1v"  # what header_prefix starts with: 4 keys, "v" first
_OFFSET_KEY = msgpack.packb("offset")


def with_offset(header: bytes, run: str, seq: int, kind: str, offset: int) -> bytes:
    """The stored and forwarded header: the learner's checked ``header`` plus ``offset``.

    A header from :func:`header_prefix` is extended in place (its map gets a
    fifth key), so the broker does not pack a new one per event; any other
    checked header (``run``, ``seq``, ``kind`` are what it says) is packed again in
    that canonical layout.  Stored headers
    start with :data:`STORED_HEADER_MARK`.
    """
    if header.startswith(_PLAIN_HEADER):
        return b"\x85" + header[1:] + _OFFSET_KEY + msgpack.packb(offset)
    return b"\x85" + header_prefix(run, kind)[1:] + msgpack.packb(seq) + (
        _OFFSET_KEY + msgpack.packb(offset)
    )


#: The first bytes of every stored header (a msgpack map of 5 keys, "v" first).
STORED_HEADER_MARK = b"\x85\xa1v"


def make_ack(acks: dict[str, tuple[int, int, int]]) -> bytes:
    """One acknowledgement message: {run: (upto, last, count)}, see the module docstring."""
    return ACK_MARK + msgpack.packb(acks)


def make_acks(acks: dict[str, tuple[int, int, int]]) -> list[bytes]:
    """``acks`` as messages of at most ACK_MAX_RUNS runs each (so one message stays small)."""
    items = list(acks.items())
    return [make_ack(dict(items[i : i + ACK_MAX_RUNS])) for i in range(0, len(items), ACK_MAX_RUNS)]


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


def _check_run(run: Any) -> None:
    """The one check of a run id arriving from the wire: it is also safe as a file name."""
    if not isinstance(run, str) or not RUN_ID_RE.match(run):
        raise WireError("bad_run", f"invalid run id {str(run)[:40]!r}")


def _is_uint(x: Any) -> bool:
    """An offset or a seq: an int in [0, MAX_OFFSET]."""
    return _is_int(x) and 0 <= x <= MAX_OFFSET


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
    _check_run(run)
    if not _is_uint(seq):
        raise WireError("garbage", f"invalid seq {str(seq)[:20]!r}")
    if not isinstance(kind, str) or kind not in _KIND_SET:
        raise WireError("garbage", f"invalid kind {str(kind)[:20]!r}")
    offset = head.get("offset")
    if offset is not None and not _is_uint(offset):
        raise WireError("garbage", f"invalid offset {str(offset)[:20]!r}")
    if need_offset and offset is None:
        raise WireError("garbage", "header has no offset")
    return Header(run, seq, kind, offset)


@dataclass(slots=True, eq=False)
class StoredEvent:
    """One stored event, wherever it comes from: the store, a broker reply, a log file, memory.

    The routing key (``offset``, ``run``, ``seq``, ``kind``) is checked where
    the bytes came in (:func:`parse_header`, :func:`parse_rows`, the log
    reader) and trusted after that; ``kind`` is None only from sources that
    cannot know it before decoding.  The event itself is carried as it
    arrived: msgpack ``payload``, a decoded ``event`` map, and for log files
    the JSON ``line`` as recorded; :meth:`load` decodes on demand, so
    duplicates cost no decode.
    """

    offset: int
    run: str
    seq: int
    kind: str | None = None
    payload: bytes | None = field(default=None, repr=False)
    event: dict[str, Any] | None = field(default=None, kw_only=True, repr=False)
    #: The event's JSON line exactly as recorded, when it came from a log file.
    line: str | None = field(default=None, kw_only=True, repr=False)

    def load(self) -> dict[str, Any]:
        """The validated event; raises EventError when the payload is bad or disagrees."""
        if self.event is None:
            if self.payload is None:
                raise EventError("stored event without payload")
            event = decode(self.payload)
            if event["run"] != self.run or event["seq"] != self.seq:
                raise EventError(
                    f"payload (run {event['run']!r}, seq {event['seq']}) does not match "
                    f"its header (run {self.run!r}, seq {self.seq})"
                )
            self.event = event
            self.payload = None
        return self.event

    def copy(self) -> StoredEvent:
        return dataclasses.replace(self)


def event_rows(events: list[StoredEvent]) -> list[list[Any]]:
    """Stored events as reply rows ``[offset, run, seq, kind, payload]`` (the broker's side)."""
    return [[e.offset, e.run, e.seq, e.kind, e.payload] for e in events]


def parse_rows(rows: Any) -> list[StoredEvent]:
    """Check reply rows into StoredEvents (the client's side); WireError names what is wrong."""
    if not isinstance(rows, list):
        raise WireError("garbage", "events is not a list")
    out = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 5:
            raise WireError("garbage", f"not a row [offset, run, seq, kind, payload]: {row!r:.60}")
        offset, run, seq, kind, payload = row
        if not (_is_uint(offset) and _is_uint(seq)):
            raise WireError("garbage", f"invalid offset or seq in row {row[:3]!r:.60}")
        _check_run(run)
        if not isinstance(kind, str) or kind not in _KIND_SET or not isinstance(payload, bytes):
            raise WireError("garbage", f"invalid kind or payload in row at offset {offset}")
        out.append(StoredEvent(offset, run, seq, kind, payload))
    return out


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
