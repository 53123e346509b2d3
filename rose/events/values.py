"""Plain values: the small domain event bodies are reduced to, so both codecs round-trip them.

None, bool, int, float, str, bytes, list, str-keyed dict, numpy arrays, and
:class:`Repr` for anything else.  Nothing here executes code: arrays of object
or structured dtypes never come back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rose.events.schema import MAX_DEPTH, MAX_REPR_CHARS, EventError

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class Repr(str):
    """A value that could not travel as data, kept as its ``repr`` and marked as such."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Repr({str.__repr__(self)})"


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


def array_from(dtype: Any, shape: Any, data: Any) -> np.ndarray:
    """The array an encoded ``[dtype, shape, data]`` describes; EventError if it is not plain."""
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
