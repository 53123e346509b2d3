"""The JSON-lines codec: one event per line of strict JSON (event logs, file sinks, replay).

Values JSON cannot hold (bytes, arrays, Repr, non-finite floats) become
one-key marker maps; a user's dict that looks like a marker is wrapped.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np

from rose.events.schema import (
    MAX_DECODE_DEPTH,
    MAX_DECODE_ITEMS,
    MAX_JSON_LINE_BYTES,
    SCAN_FROM_BYTES,
    EventError,
)
from rose.events.validation import validate
from rose.events.values import Repr, array_from

_STR = frozenset({str})
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
            return array_from(val.get("dtype"), val.get("shape"), _b64(val.get("data")))
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
    if len(line) > SCAN_FROM_BYTES:
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
