"""Validation: an event's envelope and body checked before anything downstream sees it."""

from __future__ import annotations

import math
from typing import Any

from rose.events.bodies import manifest_from_body, state_from_body
from rose.events.identity import check_run_id
from rose.events.schema import KINDS, SCHEMA_VERSION, EventError
from rose.tracking import STOP_REASONS

_NUM = (int, float)
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
