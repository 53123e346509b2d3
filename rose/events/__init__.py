"""Events: what a tracker sees, as data.

Every tracker callback is one event; the bus, the store, the file tracker, the
sinks and replay all speak it.  An event is a map::

    {"v": 1, "run": str, "seq": int, "kind": "start"|"iteration"|"stop",
     "ts": float, ["origin": {...}, on start only] "body": {...}}

Values inside bodies are reduced to a small *plain* domain (:mod:`.values`) so
that both codecs, msgpack (:mod:`.msgpack_codec`) and JSON lines (:mod:`.jsonl`),
round-trip them exactly.  Decoding never executes code: no pickle, no eval, no
object dtypes.  ``decor_kwargs`` never enter an event.

One module per job, each importing only those below it::

    schema      version, kinds, size limits, EventError
    values      the plain domain: to_plain, Repr, plain_equal
    identity    run ids and a run's origin
    bodies      callback arguments <-> bodies; make_event and friends
    validation  validate
    msgpack_codec, jsonl   the two codecs
    feed        EventFeed, EventTracker: trackers <-> events

Every name stays importable from ``rose.events``; the first use of one loads
only the module that holds it, so ``from rose.events import encode`` costs the
msgpack codec and what it stands on, never the JSON codec or the tracker feed.
"""

from __future__ import annotations

from typing import Any

# Which module holds each name.  The tables are the package's index: a name
# added to a module is added here too (tests/test_events_package.py checks).
_SCHEMA = (
    "SCHEMA_VERSION",
    "KINDS",
    "MAX_EVENT_BYTES",
    "JSON_EXPANSION",
    "MAX_JSON_LINE_BYTES",
    "MAX_DEPTH",
    "MAX_REPR_CHARS",
    "MAX_DECODE_DEPTH",
    "MAX_DECODE_ITEMS",
    "SCAN_FROM_BYTES",
    "EventError",
)
_VALUES = ("Repr", "to_plain", "plain_equal", "array_from")
_IDENTITY = ("RUN_ID_RE", "sanitize_run_name", "new_run_id", "check_run_id", "make_origin")
_BODIES = (
    "manifest_to_body",
    "manifest_from_body",
    "state_to_body",
    "state_from_body",
    "config_snapshot",
    "config_from_snapshot",
    "make_event",
    "start_event",
    "iteration_event",
    "stop_event",
)
_VALIDATION = ("validate",)
_MSGPACK = ("pack", "unpack", "encode", "decode", "decode_unbounded")
_JSONL = ("to_json_line", "from_json_line", "json_line_is_small")
_FEED = ("EventFeed", "EventTracker")
# The callback types events are made from, importable here as they always were.
_TRACKING = (
    "STOP_REASONS",
    "CriterionManifest",
    "EventContext",
    "IterationState",
    "PipelineManifest",
    "TaskManifest",
    "TrackerBase",
    "delivering",
    "event_context",
)

__all__ = [
    name
    for table in (_SCHEMA, _VALUES, _IDENTITY, _BODIES, _VALIDATION, _MSGPACK, _JSONL, _FEED)
    for name in table
    if not name.startswith("_")
]


def __getattr__(name: str) -> Any:
    if name in _MSGPACK:
        from rose.events import msgpack_codec as home
    elif name in _SCHEMA:
        from rose.events import schema as home
    elif name in _VALUES:
        from rose.events import values as home
    elif name in _IDENTITY:
        from rose.events import identity as home
    elif name in _BODIES:
        from rose.events import bodies as home
    elif name in _VALIDATION:
        from rose.events import validation as home
    elif name in _JSONL:
        from rose.events import jsonl as home
    elif name in _FEED:
        from rose.events import feed as home
    elif name in _TRACKING:
        import rose.tracking as home
    else:
        raise AttributeError(f"module 'rose.events' has no attribute {name!r}")
    value = getattr(home, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_TRACKING})
