"""Hostile inputs for the fuzz tests: values, run ids, keys, events and byte strings."""

from __future__ import annotations

import math

import msgpack
from hypothesis import strategies as st

from rose.events import EventContext, encode, iteration_event, start_event, stop_event
from rose.tracking import CriterionManifest, IterationState, PipelineManifest, TaskManifest

HOSTILE_RUN_IDS = [
    "",
    ".",
    "..",
    "../../etc/passwd",
    "/abs",
    "a/b",
    "a\\b",
    "a\x00b",
    "-leading-dash",
    "x" * 129,
    "ÿunicode",
    "run id",
    "a" * 128 + "b",
]
#: Odd but valid run ids: they must work end to end.
ODD_RUN_IDS = ["con", "nul", "a" * 128, "0", "x.jsonl", "a..b", "Z-_."]
HOSTILE_KEYS = [
    "",
    "__repr__",
    "__float__",
    "__ndarray__",
    "__bytes__",
    "__dict__",
    "a/../b",
    "x" * 5000,
    "emoji 😀",
    "tab\tkey",
    "nl\nkey",
    "nul\x00key",
    "dots.in.key",
    " spaced ",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]),
    st.text(max_size=40),
    st.sampled_from(HOSTILE_KEYS + HOSTILE_RUN_IDS + ODD_RUN_IDS),
    st.binary(max_size=40),
)
keys = st.one_of(st.text(max_size=20), st.sampled_from(HOSTILE_KEYS))
#: Anything msgpack can carry (no extension types): what a hostile encoder may send.
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=30,
)
#: Plain values a learner may legitimately put in its state, hostile keys included.
plain_state = st.dictionaries(
    keys,
    st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=30),
            st.sampled_from(HOSTILE_KEYS),
        ),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=12,
    ),
    max_size=8,
)
run_ids = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z"), st.sampled_from(ODD_RUN_IDS)
)

MANIFEST = PipelineManifest(
    learner_type="SequentialActiveLearner",
    tasks={"training": TaskManifest("train", "m", False, {}, {"kernel": "rbf"})},
    criterion=CriterionManifest("check", "m", False, {}, {}, "mse", 0.01, "<"),
)


@st.composite
def valid_events(draw, run: str | None = None, kind: str | None = None, seq: int | None = None):
    """A well-formed event (of ``kind``, when given) whose state is as strange as plain
    data gets."""
    run_id = run if run is not None else draw(st.from_regex(r"\A[a-z][a-z0-9]{0,8}\Z"))
    seq = seq if seq is not None else draw(st.integers(min_value=0, max_value=50))
    ts = draw(st.floats(min_value=0, max_value=4e9))
    kind = kind or draw(st.sampled_from(["start", "iteration", "stop"]))
    ctx = EventContext(run_id, seq, ts, {"host": "h", "pid": 1} if kind == "start" else None)
    if kind == "start":
        return start_event(ctx, MANIFEST)
    state = IterationState(
        iteration=draw(st.integers(min_value=0, max_value=10**6)),
        learner_id=draw(st.one_of(st.none(), st.integers(0, 8), st.sampled_from(["A", "b/c"]))),
        metric_name=draw(st.one_of(st.none(), st.sampled_from(["mse", "loss/val", "x" * 300]))),
        metric_value=draw(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))),
        metric_threshold=draw(st.one_of(st.none(), st.floats(allow_nan=True))),
        state=draw(plain_state),
        current_config=draw(st.dictionaries(keys, st.text(max_size=10), max_size=3)),
    )
    if kind == "iteration":
        return iteration_event(ctx, state)
    reason = draw(st.sampled_from(["criterion_met", "max_iter_reached", "stopped", "error"]))
    return stop_event(ctx, draw(st.one_of(st.none(), st.just(state))), reason)


def paths(event: dict, prefix: tuple = ()) -> list[tuple]:
    """Every field path of an event (maps only), to replace one of them."""
    out = []
    for k, v in event.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out.extend(paths(v, (*prefix, k)))
    return out


def replace(event: dict, path: tuple, value) -> dict:
    """A copy of ``event`` with the field at ``path`` set to ``value`` (or deleted: ...)."""
    import copy

    out = copy.deepcopy(event)
    target = out
    for k in path[:-1]:
        target = target[k]
    if value is Ellipsis:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@st.composite
def mutated_events(draw) -> bytes:
    """A valid event with one field given a wrong type, a hostile value, or removed."""
    event = draw(valid_events())
    path = draw(st.sampled_from(paths(event)))
    value = draw(st.one_of(anything, st.just(Ellipsis)))
    return msgpack.packb(replace(event, path, value), use_bin_type=True)


@st.composite
def damaged_bytes(draw) -> bytes:
    """A valid encoded event, truncated, with bytes flipped, or with bytes inserted."""
    data = bytearray(encode(draw(valid_events())))
    how = draw(st.sampled_from(["truncate", "flip", "insert", "splice"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "insert":
        i = draw(st.integers(0, len(data)))
        return bytes(data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:])
    other = encode(draw(valid_events()))
    return bytes(data[: len(data) // 2] + other[len(other) // 2 :])


#: msgpack type bytes that open containers / claim lengths, for hand-made bombs.
_BOMBS = {
    "deep arrays": lambda n: b"\x91" * n + b"\xc0",
    "deep maps": lambda n: b"\x81\xa1k" * n + b"\xc0",
    "array of empty maps": lambda n: b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n,
    "array of empty arrays": lambda n: b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n,
    "array of nils": lambda n: b"\xdd" + n.to_bytes(4, "big") + b"\xc0" * n,
    "15-ary tree": lambda n: b"\x9f" * n,
    "map claiming 4G entries": lambda n: b"\xdf\xff\xff\xff\xff" + b"\xa1k\xc0" * min(n, 100),
    "str claiming 4 GB": lambda n: b"\xdb\xff\xff\xff\xff" + b"x" * min(n, 100),
    "bin claiming 4 GB": lambda n: b"\xc6\xff\xff\xff\xff" + b"x" * min(n, 100),
    "ext array claiming 4G dims": lambda n: msgpack.packb(
        msgpack.ExtType(1, b"\x93\xa3<f8\xdd\xff\xff\xff\xff" + b"\x01" * min(n, 100))
    ),
    "ext array of empty maps": lambda n: msgpack.packb(
        msgpack.ExtType(1, b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n)
    ),
    "many short strings": lambda n: (
        b"\xdd"
        + (n // 3).to_bytes(4, "big")
        + b"".join(b"\xa2" + (i % 65536).to_bytes(2, "big") for i in range(n // 3))
    ),
}
BOMB_NAMES = sorted(_BOMBS)


def bomb(name: str, size: int) -> bytes:
    return _BOMBS[name](size)
