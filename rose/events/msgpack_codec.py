"""The msgpack codec: events as bytes on the bus and in the store, decoded with bounds.

Arrays and :class:`~rose.events.values.Repr` travel as msgpack extensions;
decoding never executes code and a byte scanner checks size, value count and
nesting before msgpack builds anything from untrusted input.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from rose.events.schema import (
    MAX_DECODE_DEPTH,
    MAX_DECODE_ITEMS,
    MAX_EVENT_BYTES,
    SCAN_FROM_BYTES,
    EventError,
)
from rose.events.validation import validate
from rose.events.values import Repr, array_from

_EXT_NDARRAY = 1
_EXT_REPR = 2


def _ext_default(x: Any) -> msgpack.ExtType:
    if isinstance(x, Repr):
        return msgpack.ExtType(_EXT_REPR, str(x).encode())
    if isinstance(x, np.ndarray):
        payload = msgpack.packb([x.dtype.str, list(x.shape), x.tobytes()])
        return msgpack.ExtType(_EXT_NDARRAY, payload)
    raise TypeError(f"not a plain value: {type(x).__name__}")


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
        return array_from(*parts)
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
    if len(data) > SCAN_FROM_BYTES or len(data.translate(None, _NOT_CONTAINER)) > MAX_DECODE_DEPTH:
        _scan_msgpack(data)
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_ext_hook)
    except EventError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types on bad input
        raise EventError(f"undecodable msgpack: {type(exc).__name__}: {str(exc)[:120]}") from exc


def encode(event: dict[str, Any]) -> bytes:
    """An event as msgpack bytes; not validated (BusTracker calls this once per event)."""
    return pack(event)


def decode(data: bytes) -> dict[str, Any]:
    """msgpack bytes → validated event."""
    return validate(unpack(data))


def decode_unbounded(data: bytes) -> dict[str, Any]:
    """Like decode, without the size bounds: for bytes this process encoded itself
    (an oversized event a tracker keeps whole in its own spool), never for received ones."""
    return validate(msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_ext_hook))
