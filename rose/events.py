"""Events: what a tracker sees, as data.

Every tracker callback is one event; the bus, the store, the file tracker, the
sinks and replay all speak it.  An event is a map::

    {"v": 1, "run": str, "seq": int, "kind": "start"|"iteration"|"stop",
     "ts": float, ["origin": {...}, on start only] "body": {...}}

Values inside bodies are reduced to a small *plain* domain (None, bool, int,
float, str, bytes, list, str-keyed dict, numpy arrays, and :class:`Repr` for
anything else) so that both codecs here, msgpack and JSON lines, round-trip
them exactly.  Decoding never executes code: no pickle, no eval, no object
dtypes.  ``decor_kwargs`` never enter an event.
"""

from __future__ import annotations

import base64
import getpass
import json
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgpack
import numpy as np

from rose.tracking import (
    STOP_REASONS,
    CriterionManifest,
    EventContext,
    IterationState,
    PipelineManifest,
    TaskManifest,
    TrackerBase,
    delivering,
    event_context,
)

SCHEMA_VERSION = 1
KINDS = ("start", "iteration", "stop")

#: The one size limit of the whole system: the largest event, in bytes of its msgpack
#: encoding, that a learner sends, the broker stores and forwards and decoders accept.
MAX_EVENT_BYTES = 16 * 1024 * 1024
#: JSON spends at most this many bytes on one byte of msgpack: ``b""`` (2 bytes) becomes
#: ``{"__bytes__":""},`` (17), a control character (1) ``\u00XX`` (6), ``False`` (1) ``false,``.
JSON_EXPANSION = 9
#: The longest JSON line of an event within MAX_EVENT_BYTES (event logs, file sinks,
#: spools, replay): derived from the one limit, so nothing a store holds is refused by replay.
MAX_JSON_LINE_BYTES = JSON_EXPANSION * MAX_EVENT_BYTES + 64 * 1024
#: Nesting deeper than this is stored as a Repr; keeps encode and decode bounded.
MAX_DEPTH = 32
#: Repr strings are cut to this many characters.
MAX_REPR_CHARS = 4096
#: Decoders reject events nested deeper than this (encoders stay below MAX_DEPTH + 8),
#: so nothing downstream can hit the recursion limit on hostile input.
MAX_DECODE_DEPTH = 64
#: Decoders reject events of more values than this (containers, keys and scalars):
#: memory for one decoded event stays in the tens of MB, whatever its bytes say.
MAX_DECODE_ITEMS = 1_000_000
#: Inputs up to this size with too few containers to nest deeply skip the bounds scan.
_SCAN_FROM_BYTES = 64 * 1024

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_EXT_NDARRAY = 1
_EXT_REPR = 2
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class EventError(ValueError):
    """An event (or encoded event) that this version of rose cannot accept."""


class Repr(str):
    """A value that could not travel as data, kept as its ``repr`` and marked as such."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Repr({str.__repr__(self)})"


# ---------------------------------------------------------------- plain values


def _repr_of(x: Any) -> Repr:
    try:
        text = repr(x)
    except Exception as exc:  # a broken __repr__ must not reach the learner
        text = f"<unrepresentable {type(x).__name__}: {type(exc).__name__}>"
    return Repr(text[:MAX_REPR_CHARS])


def _plain_array(a: np.ndarray) -> np.ndarray | Repr:
    if a.dtype.hasobject or a.dtype.fields is not None or np.dtype(a.dtype.str) != a.dtype:
        return _repr_of(a)
    return np.ascontiguousarray(a)


def to_plain(x: Any, _depth: int = 0) -> Any:
    """Reduce ``x`` to the plain domain; never raises."""
    if type(x) is dict and _flat_plain(x):
        return x.copy()  # the tracker hot path: a state dict of numbers and strings
    if x is None or type(x) in (bool, str, float, Repr):
        return x
    if isinstance(x, str):
        return str(x)
    if isinstance(x, float):  # numpy float64 is a float subclass
        return float(x)
    if isinstance(x, int):
        return int(x) if _INT_MIN <= x <= _INT_MAX else Repr(str(x))
    if _depth >= MAX_DEPTH:
        return _repr_of(x)
    if isinstance(x, np.ndarray):
        return _plain_array(x)
    if isinstance(x, np.generic):
        if isinstance(x, (np.bool_, np.integer, np.floating, np.str_, np.bytes_)):
            return to_plain(x.item(), _depth + 1)
        return _repr_of(x)
    if isinstance(x, bytes):
        return x
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    # Values that are already plain skip the call: this is the tracker hot path.
    if isinstance(x, dict):
        return {
            k if type(k) is str else str(k): v if type(v) in _LEAVES else to_plain(v, _depth + 1)
            for k, v in x.items()
        }
    if isinstance(x, (list, tuple)):
        return [v if type(v) in _LEAVES else to_plain(v, _depth + 1) for v in x]
    return _repr_of(x)


#: Types to_plain returns unchanged.
_LEAVES = frozenset({type(None), bool, str, float, Repr})
_FLAT = _LEAVES | {int}
_STR = frozenset({str})


def _flat_plain(d: dict) -> bool:
    """True when ``d`` has str keys and plain scalar values only (type checks run in C)."""
    if not _STR.issuperset(map(type, d)):
        return False
    types = set(map(type, d.values()))
    if not types <= _FLAT:
        return False
    return int not in types or all(
        _INT_MIN <= v <= _INT_MAX for v in d.values() if type(v) is int
    )


def plain_equal(a: Any, b: Any) -> bool:
    """Equality over plain values where arrays compare by dtype, shape and content."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(plain_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(plain_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------- run identity


def sanitize_run_name(name: str) -> str:
    """Turn a user's run name into something safe for file names and topics."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-_")
    return cleaned[:64]


def new_run_id(name: str | None = None) -> str:
    """A fresh run id: uuid4 hex, prefixed by the sanitized run name when given."""
    hex_id = uuid.uuid4().hex
    prefix = sanitize_run_name(name) if name else ""
    return f"{prefix}-{hex_id}" if prefix else hex_id


def check_run_id(run: Any) -> str:
    if not isinstance(run, str) or not RUN_ID_RE.match(run):
        raise EventError(
            f"invalid run id {str(run)[:80]!r}: expected [A-Za-z0-9._-], at most 128 chars"
        )
    return run


def make_origin() -> dict[str, Any]:
    """Where a run comes from; stamped once per learner on its start event."""
    from rose import __version__

    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user, "rose": __version__}


# ---------------------------------------------------------------- bodies


def manifest_to_body(manifest: PipelineManifest) -> dict[str, Any]:
    def task(t: TaskManifest) -> dict[str, Any]:
        # decor_kwargs are deliberately absent: they may hold secrets.
        return {
            "func_name": t.func_name,
            "func_module": t.func_module,
            "as_executable": bool(t.as_executable),
            "log_params": to_plain(dict(t.log_params or {})),
        }

    criterion = None
    if manifest.criterion is not None:
        c = manifest.criterion
        criterion = {
            **task(c),
            "metric_name": c.metric_name,
            "threshold": to_plain(c.threshold),
            "operator": c.operator,
        }
    return {
        "learner_type": manifest.learner_type,
        "parallel_count": manifest.parallel_count,
        "tasks": {name: task(t) for name, t in manifest.tasks.items()},
        "criterion": criterion,
    }


def config_snapshot(config: Any, iteration: int) -> dict[str, Any]:
    """A state's ``current_config`` as plain data (pydantic loads only when one is set)."""
    if config is None:
        return {}
    from rose.config import config_snapshot as snapshot

    return snapshot(config, iteration)


def config_from_snapshot(snapshot: dict[str, Any]) -> Any:
    """The LearnerConfig an event's ``current_config`` describes, or None if empty."""
    if not snapshot:
        return None
    from rose.config import config_from_snapshot as rebuild

    return rebuild(snapshot)


def state_to_body(state: IterationState) -> dict[str, Any]:
    # metric_history is left out: it is rebuilt from the run's own iterations.
    return {
        "iteration": state.iteration,
        "learner_id": state.learner_id,
        "metric_name": state.metric_name,
        "metric_value": to_plain(state.metric_value),
        "metric_threshold": to_plain(state.metric_threshold),
        "should_stop": bool(state.should_stop),
        "current_config": config_snapshot(state.current_config, state.iteration),
        "state": to_plain(state.state),
    }


def _need(body: dict, key: str, types: type | tuple, what: str) -> Any:
    if key not in body:
        raise EventError(f"{what}: missing field {key!r}")
    value = body[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise EventError(f"{what}: field {key!r} has type {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))


def _task_from(name: str, d: Any, cls: type = TaskManifest, **extra: Any) -> TaskManifest:
    what = f"task {name!r}"
    if not isinstance(d, dict):
        raise EventError(f"{what}: expected a map")
    return cls(
        func_name=_need(d, "func_name", str, what),
        func_module=_need(d, "func_module", str, what),
        as_executable=_need(d, "as_executable", bool, what),
        decor_kwargs={},
        log_params=_need(d, "log_params", dict, what),
        **extra,
    )


def manifest_from_body(body: dict[str, Any]) -> PipelineManifest:
    what = "start body"
    tasks = _need(body, "tasks", dict, what)
    crit = body.get("criterion")
    criterion = None
    if crit is not None:
        if not isinstance(crit, dict):
            raise EventError("criterion: expected a map")
        criterion = _task_from(
            "criterion",
            crit,
            CriterionManifest,
            metric_name=_need(crit, "metric_name", str, "criterion"),
            threshold=_need(crit, "threshold", _NUM, "criterion"),
            operator=_need(crit, "operator", str, "criterion"),
        )
    parallel = body.get("parallel_count")
    if parallel is not None and (not isinstance(parallel, int) or isinstance(parallel, bool)):
        raise EventError("start body: parallel_count must be an int or null")
    return PipelineManifest(
        learner_type=_need(body, "learner_type", str, what),
        tasks={str(k): _task_from(str(k), v) for k, v in tasks.items()},
        criterion=criterion,
        parallel_count=parallel,
    )


def state_from_body(body: Any, history: list[float] | None = None) -> IterationState:
    what = "iteration body"
    if not isinstance(body, dict):
        raise EventError(f"{what}: expected a map")
    learner_id = body.get("learner_id")
    if learner_id is not None and not isinstance(learner_id, (int, str)):
        raise EventError(f"{what}: learner_id must be an int, a string or null")
    return IterationState(
        iteration=_need(body, "iteration", int, what),
        learner_id=learner_id,
        metric_name=_need(body, "metric_name", _OPT_STR, what),
        metric_value=_need(body, "metric_value", _OPT_NUM, what),
        metric_threshold=_need(body, "metric_threshold", _OPT_NUM, what),
        metric_history=list(history or []),
        should_stop=_need(body, "should_stop", bool, what),
        current_config=config_from_snapshot(_need(body, "current_config", dict, what)),
        state=_need(body, "state", dict, what),
    )


# ---------------------------------------------------------------- events


def make_event(ctx: EventContext, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "run": ctx.run,
        "seq": ctx.seq,
        "kind": kind,
        "ts": ctx.ts,
    }
    if kind == "start":
        event["origin"] = to_plain(ctx.origin or {})
    event["body"] = body
    return event


def start_event(ctx: EventContext, manifest: PipelineManifest) -> dict[str, Any]:
    return make_event(ctx, "start", manifest_to_body(manifest))


def iteration_event(ctx: EventContext, state: IterationState) -> dict[str, Any]:
    return make_event(ctx, "iteration", state_to_body(state))


def stop_event(
    ctx: EventContext, final_state: IterationState | None, reason: str
) -> dict[str, Any]:
    final = state_to_body(final_state) if final_state is not None else None
    return make_event(ctx, "stop", {"reason": reason, "final_state": final})


_NONE = type(None)
_STR_OR_NONE = frozenset({str, _NONE})
_NUM_OR_NONE = frozenset({int, float, _NONE})
_LEARNER_ID = frozenset({int, str, _NONE})


def _state_body_ok(b: Any) -> bool:
    """Exact-type check of an iteration body, without building anything.

    Decoded events hold exact builtin types, so valid bodies pass here; anything
    else goes to state_from_body, which says precisely what is wrong.
    """
    return (
        type(b) is dict
        and type(b.get("iteration")) is int
        and type(b.get("should_stop")) is bool
        and type(b.get("state")) is dict
        and type(b.get("current_config")) is dict
        and type(b.get("metric_name")) in _STR_OR_NONE
        and type(b.get("metric_value")) in _NUM_OR_NONE
        and type(b.get("metric_threshold")) in _NUM_OR_NONE
        and type(b.get("learner_id")) in _LEARNER_ID
        and "metric_name" in b
        and "metric_value" in b
        and "metric_threshold" in b
    )


def validate(event: Any) -> dict[str, Any]:
    """Check an event's envelope and body; return it, or raise EventError saying why."""
    if not isinstance(event, dict):
        raise EventError(f"event must be a map, got {type(event).__name__}")
    v = event.get("v")
    if v != SCHEMA_VERSION or isinstance(v, bool):
        raise EventError(
            f"unsupported event schema version {v!r}: this rose reads version {SCHEMA_VERSION}"
        )
    check_run_id(event.get("run"))
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        raise EventError(f"invalid seq {seq!r}")
    kind = event.get("kind")
    if kind not in KINDS:
        raise EventError(f"unknown event kind {str(kind)[:40]!r}")
    ts = event.get("ts")
    if not isinstance(ts, _NUM) or isinstance(ts, bool) or not math.isfinite(ts):
        raise EventError(f"invalid ts {ts!r}")
    body = event.get("body")
    if not isinstance(body, dict):
        raise EventError("event body must be a map")
    if kind == "start":
        if not isinstance(event.get("origin", {}), dict):
            raise EventError("origin must be a map")
        manifest_from_body(body)
    elif kind == "iteration":
        if not _state_body_ok(body):
            state_from_body(body)
    else:
        reason = body.get("reason")
        if reason not in STOP_REASONS:
            raise EventError(f"unknown stop reason {str(reason)[:40]!r}")
        final = body.get("final_state")
        if final is not None and not _state_body_ok(final):
            state_from_body(final)
    return event


# ---------------------------------------------------------------- msgpack codec


def _ext_default(x: Any) -> msgpack.ExtType:
    if isinstance(x, Repr):
        return msgpack.ExtType(_EXT_REPR, str(x).encode())
    if isinstance(x, np.ndarray):
        payload = msgpack.packb([x.dtype.str, list(x.shape), x.tobytes()])
        return msgpack.ExtType(_EXT_NDARRAY, payload)
    raise TypeError(f"not a plain value: {type(x).__name__}")


def _array_from(dtype: Any, shape: Any, data: Any) -> np.ndarray:
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(data, bytes):
        raise EventError("malformed array")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise EventError(f"bad array dtype {dtype[:40]!r}") from exc
    if dt.hasobject or dt.fields is not None or len(shape) > 32:
        raise EventError(f"array dtype {dtype[:40]!r} not allowed")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise EventError("bad array shape")
    if math.prod(shape) * dt.itemsize != len(data):
        raise EventError("array data does not match its shape")
    return np.frombuffer(data, dtype=dt).reshape(shape).copy()


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_REPR:
        return Repr(data.decode("utf-8", errors="replace"))
    if code == _EXT_NDARRAY:
        _scan_msgpack(data, max_items=64, max_depth=2)  # [dtype, [dims], data]
        try:
            parts = msgpack.unpackb(data, raw=False)
        except Exception as exc:
            raise EventError("malformed array") from exc
        if not isinstance(parts, list) or len(parts) != 3:
            raise EventError("malformed array")
        return _array_from(*parts)
    raise EventError(f"unknown msgpack extension {code}")


def pack(value: Any) -> bytes:
    """msgpack-encode a plain value (an event, or a part of one)."""
    # strict_types: a Repr (a str subclass) must reach _ext_default, not pass as a plain str.
    return msgpack.packb(value, default=_ext_default, use_bin_type=True, strict_types=True)


# msgpack type bytes -> how the bounds scan steps over them (see _scan_msgpack):
# 0 fixed size (_ARG = bytes), 1 fixmap, 2 fixarray, 4 str/bin and 5 ext with an
# _ARG-byte length, 6 array and 7 map with an _ARG-byte count, 9 invalid.
_KIND = bytearray(256)
_ARG = bytearray([1] * 256)
for _b in range(0x80, 0xC0):
    _KIND[_b], _ARG[_b] = (
        (1, _b & 0x0F) if _b < 0x90 else (2, _b & 0x0F) if _b < 0xA0 else (0, 1 + (_b & 0x1F))
    )
for _b, (_k, _a) in {
    0xC1: (9, 0), 0xC4: (4, 1), 0xC5: (4, 2), 0xC6: (4, 4), 0xC7: (5, 1), 0xC8: (5, 2),
    0xC9: (5, 4), 0xCA: (0, 5), 0xCB: (0, 9), 0xCC: (0, 2), 0xCD: (0, 3), 0xCE: (0, 5),
    0xCF: (0, 9), 0xD0: (0, 2), 0xD1: (0, 3), 0xD2: (0, 5), 0xD3: (0, 9), 0xD4: (0, 3),
    0xD5: (0, 4), 0xD6: (0, 6), 0xD7: (0, 10), 0xD8: (0, 18), 0xD9: (4, 1), 0xDA: (4, 2),
    0xDB: (4, 4), 0xDC: (6, 2), 0xDD: (6, 4), 0xDE: (7, 2), 0xDF: (7, 4),
}.items():  # fmt: skip
    _KIND[_b], _ARG[_b] = _k, _a
#: Every byte that is not a container header, deleted to count candidate containers.
_NOT_CONTAINER = bytes(b for b in range(256) if _KIND[b] not in (1, 2, 6, 7))


def _scan_msgpack(
    data: bytes, max_items: int = MAX_DECODE_ITEMS, max_depth: int = MAX_DECODE_DEPTH
) -> None:
    """Count values and nesting without building anything; EventError past the bounds.

    Declared sizes count before anything is read, so a header claiming a
    billion entries costs nothing.  Malformed input is left for msgpack to report.
    """
    kind, arg, from_bytes = _KIND, _ARG, int.from_bytes
    pos, end, n = 0, len(data), 0
    left = [1]  # values still to read in each open container
    while left:
        if not left[-1]:
            left.pop()
            continue
        left[-1] -= 1
        if pos >= end:
            return
        b = data[pos]
        k = kind[b]
        n += 1
        if k == 0:
            pos += arg[b]
            continue
        if k in (4, 5):
            a = arg[b]
            pos += 1 + a + (k == 5) + from_bytes(data[pos + 1 : pos + 1 + a], "big")
            continue
        if k in (1, 2):
            count = arg[b] * 2 if k == 1 else arg[b]
            pos += 1
        elif k in (6, 7):
            a = arg[b]
            count = from_bytes(data[pos + 1 : pos + 1 + a], "big") * (2 if k == 7 else 1)
            pos += 1 + a
        else:
            return
        if count:
            if n + sum(left) + count > max_items:
                raise EventError(f"encoded event holds more than {max_items} values")
            if len(left) > max_depth:  # left holds the root slot plus each open container
                raise EventError(f"encoded event nests deeper than {max_depth} levels")
            left.append(count)


def unpack(data: bytes) -> Any:
    """Decode msgpack bytes to plain values, bounded and without executing anything.

    Bounded in size (MAX_EVENT_BYTES), values (MAX_DECODE_ITEMS) and nesting
    (MAX_DECODE_DEPTH).  The bounds scan runs only for inputs that could break
    them: large ones, or ones with enough container headers to nest deeply.
    """
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(f"encoded event of {len(data)} bytes exceeds {MAX_EVENT_BYTES}")
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > _SCAN_FROM_BYTES or len(data.translate(None, _NOT_CONTAINER)) > MAX_DECODE_DEPTH:
        _scan_msgpack(data)
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_ext_hook)
    except EventError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types on bad input
        raise EventError(f"undecodable msgpack: {type(exc).__name__}: {str(exc)[:120]}") from exc


def encode(event: dict[str, Any]) -> bytes:
    return pack(event)


def decode(data: bytes) -> dict[str, Any]:
    """msgpack bytes → validated event."""
    return validate(unpack(data))


# ---------------------------------------------------------------- JSON-lines codec

_MARKERS = ("__ndarray__", "__repr__", "__bytes__", "__float__", "__dict__")


_JSON_SCALARS = frozenset({type(None), bool, str, int, float})


def _json_flat(d: dict) -> bool:
    """A dict JSON can take as it is: str keys, finite scalar values, not marker-shaped."""
    if len(d) == 1 or not _STR.issuperset(map(type, d)):
        return False
    types = set(map(type, d.values()))
    if not types <= _JSON_SCALARS:
        return False
    if float not in types:
        return True
    if types == {float}:
        return math.isfinite(sum(d.values()))  # any nan/inf makes the sum non-finite
    return all(math.isfinite(v) for v in d.values() if type(v) is float)


_JSON_LEAVES = frozenset({type(None), bool, str, int})  # floats may be nan/inf


def _to_json(x: Any) -> Any:
    t = type(x)
    if t is dict:
        if _json_flat(x):
            return x
        d = {k: v if type(v) in _JSON_LEAVES else _to_json(v) for k, v in x.items()}
        if len(d) == 1 and next(iter(d)) in _MARKERS:
            return {"__dict__": d}  # a user's dict that looks like a marker
        return d
    if t is list:
        return [v if type(v) in _JSON_LEAVES else _to_json(v) for v in x]
    if t is float:
        return x if math.isfinite(x) else {"__float__": repr(x)}
    if t is Repr:
        return {"__repr__": str(x)}
    if t is bytes:
        return {"__bytes__": base64.b64encode(x).decode()}
    if t is np.ndarray:
        return {
            "__ndarray__": {
                "dtype": x.dtype.str,
                "shape": list(x.shape),
                "data": base64.b64encode(x.tobytes()).decode(),
            }
        }
    return x


def _from_json(x: Any) -> Any:
    if type(x) is list:
        return [v if type(v) in _JSON_SCALARS else _from_json(v) for v in x]
    if type(x) is not dict:
        return x
    if len(x) == 1:
        ((key, val),) = x.items()
        if key == "__repr__" and isinstance(val, str):
            return Repr(val)
        if key == "__float__" and val in ("nan", "inf", "-inf"):
            return float(val)
        if key == "__bytes__" and isinstance(val, str):
            return _b64(val)
        if key == "__ndarray__" and isinstance(val, dict):
            return _array_from(val.get("dtype"), val.get("shape"), _b64(val.get("data")))
        if key == "__dict__" and isinstance(val, dict):
            return {k: _from_json(v) for k, v in val.items()}
    elif _JSON_SCALARS.issuperset(map(type, x.values())):
        return x  # no markers inside: json.loads already built exactly this
    return {k: v if type(v) in _JSON_SCALARS else _from_json(v) for k, v in x.items()}


def _b64(s: Any) -> bytes:
    if not isinstance(s, str):
        raise EventError("malformed base64 field")
    try:
        return base64.b64decode(s, validate=True)
    except ValueError as exc:
        raise EventError("malformed base64 field") from exc


def to_json_line(event: dict[str, Any]) -> str:
    """One event as one line of strict JSON (no NaN tokens), newline included."""
    return json.dumps(_to_json(event), separators=(",", ":"), allow_nan=False) + "\n"


def json_line_is_small(line: str | bytes) -> bool:
    """True when a JSON line cannot break the decode bounds (most lines; cheap to tell).

    Such a line is short and has too few brackets to nest deeper than
    MAX_DECODE_DEPTH; any other line needs :func:`from_json_line`'s checks.
    """
    if len(line) > _SCAN_FROM_BYTES:
        return False
    if isinstance(line, str):
        return line.count("[") + line.count("{") <= MAX_DECODE_DEPTH
    return line.count(b"[") + line.count(b"{") <= MAX_DECODE_DEPTH


def _check_json_items(line: str | bytes) -> None:
    # Every value but the first follows a comma or an opening bracket: an upper bound.
    marks = ("[", "{", ",") if isinstance(line, str) else (b"[", b"{", b",")
    if sum(line.count(m) for m in marks) + 1 > MAX_DECODE_ITEMS:  # type: ignore[arg-type]
        raise EventError(f"event line holds more than {MAX_DECODE_ITEMS} values")


def _check_depth(value: Any) -> None:
    """EventError when ``value`` nests deeper than MAX_DECODE_DEPTH (iterative, no recursion)."""
    stack = [(value, 1)]
    while stack:
        x, depth = stack.pop()
        if depth > MAX_DECODE_DEPTH:
            raise EventError(f"event nests deeper than {MAX_DECODE_DEPTH} levels")
        if type(x) is dict:
            stack.extend((v, depth + 1) for v in x.values() if type(v) in (dict, list))
        elif type(x) is list:
            stack.extend((v, depth + 1) for v in x if type(v) in (dict, list))


def _no_constants(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


#: rose writes strict JSON (non-finite floats as markers), so NaN/Infinity tokens are refused.
_JSON_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def from_json_line(line: str | bytes) -> dict[str, Any]:
    """One JSON line → validated event (bounded like :func:`unpack`)."""
    if len(line) > MAX_JSON_LINE_BYTES:
        raise EventError(f"event line of {len(line)} bytes exceeds {MAX_JSON_LINE_BYTES}")
    small = json_line_is_small(line)
    if not small:
        _check_json_items(line)
    try:
        text = line if isinstance(line, str) else line.decode("utf-8")
        raw = _JSON_DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise EventError(f"not a JSON event line: {str(exc)[:120]}") from exc
    if not small:
        _check_depth(raw)
    # Only a line holding a marker ("__repr__", "__ndarray__", ...) needs the marker walk.
    return validate(_from_json(raw) if '"__' in text else raw)


# ---------------------------------------------------------------- driving trackers


class EventFeed:
    """Drive any TrackerBase from events, as the learner would have.

    Rebuilds real PipelineManifest / IterationState objects (metric_history
    included, per learner) and delivers each call under the event's own run id,
    seq and timestamp.  Exceptions from the tracker propagate: whoever feeds
    events owns the retry policy.
    """

    def __init__(self, tracker: TrackerBase) -> None:
        self.tracker = tracker
        self._history: dict[tuple[str, Any], list[float]] = {}

    def _history_of(self, run: str, body: dict[str, Any]) -> list[float]:
        return self._history.setdefault((run, body.get("learner_id")), [])

    def __call__(self, event: dict[str, Any]) -> None:
        kind, body, run = event["kind"], event["body"], event["run"]
        ctx = EventContext(run=run, seq=event["seq"], ts=event["ts"], origin=event.get("origin"))
        with delivering(ctx):
            if kind == "start":
                self.tracker.on_start(manifest_from_body(body))
            elif kind == "iteration":
                hist = self._history_of(run, body)
                value = body.get("metric_value")
                seen = hist if value is None else [*hist, value]
                self.tracker.on_iteration(state_from_body(body, seen))
                if value is not None:  # only once delivered: a retried event counts once
                    hist.append(value)
            else:
                final = body.get("final_state")
                state = None
                if final is not None:
                    state = state_from_body(final, self._history_of(run, final))
                self.tracker.on_stop(state, body["reason"])

    def feed(self, events: Iterable[dict[str, Any]]) -> int:
        n = 0
        for event in events:
            self(event)
            n += 1
        return n


class EventTracker(TrackerBase):
    """A tracker that turns each callback into one event and hands it to ``emit``.

    Run id, seq and timestamp come from the learner's event context, so every
    event tracker of one learner produces the same events.  Called by hand
    (no context), it stamps its own: a fresh run id, seq from 0, the clock.
    """

    def __init__(self) -> None:
        self._own_run: str | None = None
        self._own_seq = 0

    def emit(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def _context(self, kind: str) -> EventContext:
        ctx = event_context()
        if ctx is not None:
            return ctx
        if self._own_run is None:
            self._own_run = new_run_id()
        seq, self._own_seq = self._own_seq, self._own_seq + 1
        origin = make_origin() if kind == "start" else None
        return EventContext(run=self._own_run, seq=seq, ts=time.time(), origin=origin)

    def on_start(self, manifest: PipelineManifest) -> None:
        self.emit(start_event(self._context("start"), manifest))

    def on_iteration(self, state: IterationState) -> None:
        self.emit(iteration_event(self._context("iteration"), state))

    def on_stop(self, final_state: IterationState | None, reason: str) -> None:
        self.emit(stop_event(self._context("stop"), final_state, reason))
