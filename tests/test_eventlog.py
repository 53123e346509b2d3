"""The one event-log reader: bounded lines, bad lines counted once, progress, log sources."""

from __future__ import annotations

import logging

import rose.eventlog
from rose.eventlog import EventLogReader, read_events
from rose.events import to_json_line
from sinks.sources import LogSource
from tests.sinks.helpers import run_events


def test_an_overlong_line_is_bad_and_never_read_whole(tmp_path, monkeypatch, caplog):
    events = run_events("r1", 2)
    lines = [to_json_line(e) for e in events]
    monkeypatch.setattr(rose.eventlog, "_READ_LIMIT", max(map(len, lines)) + 2)
    monkeypatch.setattr(rose.eventlog, "_CHUNK", 64)
    path = tmp_path / "r1.jsonl"
    path.write_text(lines[0] + "x" * 10_000 + "\n" + "".join(lines[1:]))
    seen: list[int] = []
    reader = EventLogReader(path, on_bytes=seen.append)
    with caplog.at_level(logging.WARNING, logger="rose.eventlog"):
        assert [e for _line, e in reader] == events
    assert reader.bad_lines == 1 and sum(seen) == path.stat().st_size
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "skipped 1 bad line(s); first: line 2: line longer than" in msg


def test_log_source_keeps_lines_as_recorded_and_counts_bad_ones(tmp_path, caplog):
    events = run_events("r1", 2)
    lines = [to_json_line(e) for e in events]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(lines[0] + "not json\n" + lines[1])
    b.write_text("".join(lines[2:]).rstrip("\n"))  # the last newline lost: still an event
    source = LogSource([a, b])
    with caplog.at_level(logging.WARNING):
        items = list(source.subscribe(1))
    assert [(i.offset, i.seq, i.kind, i.line) for i in items] == [
        (n, e["seq"], e["kind"], line) for n, (e, line) in enumerate(zip(events, lines, strict=True)) if n >= 1
    ]
    assert source.bad_lines == 1
    assert sum("skipped 1 bad line" in r.getMessage() for r in caplog.records) == 1
    assert [e["seq"] for e in read_events(b)] == [e["seq"] for e in events[2:]]
