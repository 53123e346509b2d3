"""The bus protocol: reply rows, stored headers, the one stored-event type."""

from __future__ import annotations

import msgpack
import pytest

from bus.store import EventStore
from bus.wire import (
    STORED_HEADER_MARK,
    StoredEvent,
    WireError,
    decode_header,
    event_rows,
    header_prefix,
    make_header,
    parse_header,
    parse_rows,
    topic_for,
    with_offset,
)
from rose.events import EventError, encode
from tests.sinks.helpers import run_events


def test_rows_round_trip_and_bad_rows_are_named():
    events = [StoredEvent(7, "r1", 0, "start", b"a"), StoredEvent(9, "r1", 2, "stop", b"")]
    back = parse_rows(event_rows(events))
    assert [(e.offset, e.run, e.seq, e.kind, e.payload) for e in back] == [
        (7, "r1", 0, "start", b"a"),
        (9, "r1", 2, "stop", b""),
    ]
    bad = {
        "not a list": ({"a": 1}, "garbage"),
        "short row": ([[1, "r", 0, "start"]], "garbage"),
        "negative offset": ([[-1, "r", 0, "start", b""]], "garbage"),
        "bool seq": ([[1, "r", True, "start", b""]], "garbage"),
        "hostile run": ([[1, "../x", 0, "start", b""]], "bad_run"),
        "unknown kind": ([[1, "r", 0, "middle", b""]], "garbage"),
        "unhashable kind": ([[1, "r", 0, ["start"], b""]], "garbage"),
        "str payload": ([[1, "r", 0, "start", "x"]], "garbage"),
    }
    for what, (rows, reason) in bad.items():
        with pytest.raises(WireError) as err:
            parse_rows(rows)
        assert err.value.reason == reason, what


def test_stored_header_extends_the_learners_and_recanonicalises_others():
    learner = header_prefix("r1", "iteration") + msgpack.packb(5)
    head = parse_header(topic_for("r1", "iteration"), learner)
    stored = with_offset(learner, *head[:3], 1234)
    assert stored.startswith(STORED_HEADER_MARK) and stored[1:].startswith(learner[1:])
    assert decode_header(stored, need_offset=True) == ("r1", 5, "iteration", 1234)
    # Another publisher's key order: packed again, so the record marker still holds.
    foreign = msgpack.packb({"kind": "iteration", "seq": 5, "run": "r1", "v": 1})
    stored = with_offset(foreign, *parse_header(topic_for("r1", "iteration"), foreign)[:3], 1234)
    assert stored.startswith(STORED_HEADER_MARK)
    assert decode_header(stored, need_offset=True) == ("r1", 5, "iteration", 1234)
    assert decode_header(make_header("r1", 5, "iteration", 1234)) == ("r1", 5, "iteration", 1234)


def test_load_decodes_once_and_refuses_a_payload_of_another_run():
    ev = run_events("r1", 1)[0]
    item = StoredEvent(0, "r1", 0, "start", encode(ev))
    assert item.load() == ev and item.payload is None and item.load() is item.event
    with pytest.raises(EventError, match="does not match"):
        StoredEvent(0, "r2", 0, "start", encode(ev)).load()


def test_reads_come_from_the_index_the_same_before_and_after_reopening(tmp_path):
    written = [
        (run, ev["seq"], ev["kind"], encode(ev)) for run in ("a", "b") for ev in run_events(run, 3)
    ]
    store = EventStore(tmp_path, segment_bytes=600)  # several segments
    for run, seq, kind, payload in written:
        assert store.add(run, seq, kind, payload) is not None
    rows = [(e.offset, e.run, e.seq, e.kind, e.payload) for e in store.read(0, 100)]
    assert [r[1:] for r in rows] == written and [r[0] for r in rows] == list(range(len(written)))
    assert len(store._segments) > 1
    assert [(e.run, e.seq) for e in store.read(3, 3)] == [w[:2] for w in written[3:6]]
    store.close()
    reopened = EventStore(tmp_path)
    assert [(e.offset, e.run, e.seq, e.kind, e.payload) for e in reopened.read(0, 100)] == rows
    reopened.close()
