"""The file sink and replay from files: byte-for-byte logs, idempotence, torn tails, hostile ids."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from cli.main import main as rose_main
from rose.eventlog import read_events
from rose.events import EventError, Repr, from_json_line, iteration_event, plain_equal, to_json_line
from rose.integrations.file_tracker import FileTracker
from rose.tracking import EventContext, IterationState
from sinks.file_sink import OUT_LOCK_FILE, FileSink, repair_tail, run_log_path
from sinks.runtime import SinkRuntime
from sinks.sources import ListSource, LogSource, MemoryStore
from tests.polling import wait_until
from tests.sinks.helpers import RuntimeThread, fast_config, run_events


def odd_events(run: str) -> list[dict]:
    """A run whose values need every JSON marker: arrays, NaN, inf, bytes, Repr, marker keys."""
    events = run_events(run, 3)
    state = IterationState(
        iteration=9,
        metric_name="m",
        metric_value=float("nan"),
        state={
            "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
            "inf": float("-inf"),
            "raw": b"\x00\xff",
            "obj": Repr("<object at 0x1>"),
            "tricky": {"__repr__": "not a marker"},
            "text": 'quote " and __ and é',
        },
    )
    events.insert(-1, iteration_event(EventContext(run, len(events) - 1, 1.7e9 + 50), state))
    events[-1] = dict(events[-1], seq=len(events) - 1)
    return events


def in_process_log(tmp_path, events) -> bytes:
    out = tmp_path / "inproc"
    out.mkdir(exist_ok=True)
    tracker = FileTracker(out)
    for e in events:
        tracker.emit(e)
    tracker.close()
    return (out / f"{events[0]['run']}.jsonl").read_bytes()


def test_file_sink_writes_what_the_file_tracker_writes(tmp_path):
    events = run_events("r1", 4) + odd_events("r2")
    SinkRuntime(FileSink(tmp_path / "out"), ListSource(events)).run()
    for run in ("r1", "r2"):
        mine = [e for e in events if e["run"] == run]
        assert (tmp_path / "out" / f"{run}.jsonl").read_bytes() == in_process_log(tmp_path, mine)


def test_file_sink_from_msgpack_store(tmp_path):
    store = MemoryStore()
    events = odd_events("r2")
    for e in events:
        store.append(e)
    sink = FileSink(tmp_path / "out")
    with RuntimeThread(SinkRuntime(sink, store, config=fast_config())):
        wait_until(lambda: (tmp_path / "out" / "r2.jsonl").exists())
        wait_until(lambda: len(list(read_events(tmp_path / "out" / "r2.jsonl"))) == len(events))
    assert (tmp_path / "out" / "r2.jsonl").read_bytes() == in_process_log(tmp_path, events)


def test_line_decoder_is_lossless_and_strict():
    for e in run_events("r1", 2) + odd_events("r2"):
        line = to_json_line(e)
        assert plain_equal(from_json_line(line), e)
        assert plain_equal(from_json_line(line.encode()), e)  # bytes, as logs are read
    with pytest.raises(EventError):
        from_json_line('{"v":1,"run":"r","seq":0,"kind":"stop","ts":NaN,"body":{}}\n')
    with pytest.raises(EventError):
        from_json_line("[1, 2]\n")


def test_restart_never_appends_what_the_file_holds(tmp_path):
    events = run_events("r1", 6)
    out = tmp_path / "out"
    SinkRuntime(FileSink(out), ListSource(events[:4])).run()
    # A second sink (no checkpoint at all) sees everything again, plus the rest.
    counters = SinkRuntime(FileSink(out), ListSource(events)).run()
    assert counters.duplicates == 4 and counters.applied == 4
    assert [e["seq"] for e in read_events(out / "r1.jsonl")] == list(range(8))


def test_torn_last_line_is_dropped_and_rewritten(tmp_path):
    events = run_events("r1", 4)
    path = tmp_path / "r1.jsonl"
    lines = [to_json_line(e) for e in events]
    path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    assert repair_tail(path) == 2
    assert path.read_text() == "".join(lines[:3])
    SinkRuntime(FileSink(tmp_path), ListSource(events)).run()
    assert path.read_text() == "".join(lines)


def test_repair_tail_handles_long_lines_and_empty_files(tmp_path):
    path = tmp_path / "r1.jsonl"
    path.write_bytes(b"")
    assert repair_tail(path) is None
    assert repair_tail(tmp_path / "missing.jsonl") is None
    big = run_events("r1", 1)
    big[1]["body"]["state"]["blob"] = "x" * 300_000
    path.write_text("".join(to_json_line(e) for e in big[:2]) + '{"v":1,"ru')
    assert repair_tail(path) == 1


def test_hostile_run_ids_never_escape(tmp_path):
    out = tmp_path / "a" / "out"
    for bad in ("../../etc/x", "../x", "/etc/passwd", ".hidden", "a/b", "..", ""):
        with pytest.raises(EventError):
            run_log_path(out, bad)
    store = MemoryStore()
    from rose.events import encode

    payload = encode(run_events("x", 1)[0])
    for bad in ("../../etc/x", "..", "a/../../b"):
        store.append_raw(bad, 0, payload)
    hostile_line = to_json_line(run_events("x", 0)[0]).replace('"run":"x"', '"run":"../../x"')
    log = tmp_path / "hostile.jsonl"
    log.write_text(hostile_line)
    rt = SinkRuntime(FileSink(out), store, config=fast_config())
    with RuntimeThread(rt):
        wait_until(lambda: rt.counters.invalid == 3)
    c = SinkRuntime(FileSink(out), LogSource([log])).run()
    assert c.received == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in (log, out / OUT_LOCK_FILE)]
    assert written == [], written


def write_log(path, events) -> None:
    path.write_text("".join(to_json_line(e) for e in events))


def test_replay_cli_into_file_is_idempotent(tmp_path, capsys):
    a, b = run_events("run-a", 5), odd_events("run-b")
    write_log(tmp_path / "a.jsonl", a)
    # the spool of b holds its events twice and out of order
    write_log(tmp_path / "b.jsonl", b[3:] + b[:3] + b[1:4])
    args = ["replay", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--into", "file"]
    assert rose_main([*args, "--out", str(tmp_path / "copy")]) == 0
    err = capsys.readouterr().err
    assert "applied" in err and "duplicate" in err
    first = {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()}
    assert first["run-b.jsonl"] == in_process_log(tmp_path, b)
    assert first["run-a.jsonl"] == in_process_log(tmp_path, a)
    assert rose_main([*args, "--out", str(tmp_path / "copy")]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()} == first
    # Replaying the copy (a directory) into a third place gives the same bytes again.
    assert (
        rose_main(
            ["replay", str(tmp_path / "copy"), "--into", "file", "--out", str(tmp_path / "c3")]
        )
        == 0
    )
    assert {p.name: p.read_bytes() for p in (tmp_path / "c3").iterdir()} == first


def test_replay_reports_bad_lines_and_gaps(tmp_path, capsys):
    events = run_events("r1", 4)
    text = "".join(to_json_line(e) for e in events[:2] + events[3:])
    (tmp_path / "r1.jsonl").write_text("garbage\n" + text + '{"torn')
    assert (
        rose_main(
            ["replay", str(tmp_path / "r1.jsonl"), "--into", "file", "--out", str(tmp_path / "o")]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "1 missing from the logs" in err and "1 invalid" in err
    assert [e["seq"] for e in read_events(tmp_path / "o" / "r1.jsonl")] == [0, 1, 3, 4, 5]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "{missing}", "--into", "file", "--out", "{tmp}/o"], "no such file"),
        (["replay", "{empty}", "--into", "file", "--out", "{tmp}/o"], "no *.jsonl"),
        (["replay", "{log}", "--into", "file"], "needs --out"),
        (["replay", "{log}", "--into", "tracker"], "module:Class"),
        (["replay", "{log}", "--into", "tracker", "--tracker", "nope.nope:X"], "cannot import"),
        (
            ["replay", "{log}", "--into", "tracker", "--tracker", "x:Y", "--out", "o"],
            "--out does not apply",
        ),
        (["replay", "{log}", "--into", "file", "--out", "o", "--learner-names", "A"],
         "--learner-names does not apply to --into file"),
        # an option two kinds share (clearml and slack) belongs to both
        (["replay", "{log}", "--into", "slack", "--learner-names", "A,B"], "no Slack webhook"),
        (["replay", "{log}", "--into", "file", "--out", "o", "--client-key", "k"],
         "--client-key applies to --publish"),
        (["replay", "{log}", "--publish", "nonsense"], "no bus file"),
        (["replay", "{log}", "--publish", "tcp://nohost"], "bad --publish endpoint"),
        (
            ["sink", "file", "--out", "{tmp}/o", "--backend", "tcp://127.0.0.1:1"],
            "where is the broker",
        ),
        (["sink", "file", "--out", "{tmp}/o", "--bus", "{log}"], "not a valid bus file"),
        (["sink", "tracker", "os:path", "--arg", "1x=2", "--bus", "{log}"], "--arg expects"),
        (["status", "--state", "{tmp}"], "no sink status"),
    ],
)
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    write_log(tmp_path / "r.jsonl", run_events("r", 1))
    subs = {
        "missing": tmp_path / "nope.jsonl",
        "empty": tmp_path / "empty",
        "tmp": tmp_path,
        "log": tmp_path / "r.jsonl",
    }
    argv = [a.format(**subs) for a in argv]
    assert rose_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert "Traceback" not in err[0]


def test_unreadable_log_is_a_one_line_error(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    log = tmp_path / "r.jsonl"
    write_log(log, run_events("r", 1))
    log.chmod(0)
    assert rose_main(["replay", str(log), "--into", "file", "--out", str(tmp_path / "o")]) == 2
    assert "permission denied" in capsys.readouterr().err


def test_replay_into_tracker_with_state_is_idempotent(tmp_path, capsys, monkeypatch):
    (tmp_path / "mytrackers.py").write_text(
        "import json\n"
        "from rose import TrackerBase\n"
        "from rose.tracking import event_context\n"
        "class Rec(TrackerBase):\n"
        "    def __init__(self, out, tag='t'):\n"
        "        self.out, self.tag = out, tag\n"
        "    def _w(self, what):\n"
        "        ctx = event_context()\n"
        "        with open(self.out, 'a') as f:\n"
        "            f.write(json.dumps([self.tag, ctx.run, ctx.seq, what]) + '\\n')\n"
        "    def on_start(self, m): self._w(m.learner_type)\n"
        "    def on_iteration(self, s): self._w(s.metric_history)\n"
        "    def on_stop(self, s, reason): self._w(reason)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    write_log(tmp_path / "r.jsonl", run_events("r", 3))
    out = tmp_path / "calls.jsonl"
    argv = [
        "replay",
        str(tmp_path / "r.jsonl"),
        "--into",
        "tracker",
        "--tracker",
        "mytrackers:Rec",
        "--arg",
        f"out={out}",
        "--arg",
        "tag=7",
        "--state",
        str(tmp_path / "st"),
    ]
    assert rose_main(argv) == 0
    assert rose_main(argv) == 0
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c[2] for c in calls] == [0, 1, 2, 3, 4]
    assert calls[0] == [7, "r", 0, "SequentialActiveLearner"]
    assert calls[3][3] == [1.0, 0.5, 1 / 3] and calls[4][3] == "max_iter_reached"
    assert not math.isnan(calls[1][3][0])


def test_parallel_replay_splits_by_run_and_matches_serial(tmp_path, capsys, caplog, monkeypatch):
    import logging

    import sinks.replay

    caplog.set_level(logging.INFO, logger="sinks.replay")
    monkeypatch.setattr(sinks.replay, "MIN_PARALLEL_BYTES", 0)
    runs = {f"p{i}": run_events(f"p{i}", 30) for i in range(4)}
    for name, events in runs.items():
        write_log(tmp_path / f"{name}.jsonl", events)
    # a spool of p0 in a second file: both files must land in the same process
    write_log(tmp_path / "spool-p0.jsonl", runs["p0"][10:])
    groups = sinks.replay.plan_groups(sorted(tmp_path.glob("*.jsonl")), 3)
    assert groups is not None and len(groups) == 3
    assert any({p.name for p in g} >= {"p0.jsonl", "spool-p0.jsonl"} for g in groups)
    logs = [str(p) for p in sorted(tmp_path.glob("*.jsonl"))]
    assert (
        rose_main(
            ["replay", *logs, "--into", "file", "--out", str(tmp_path / "par"), "--jobs", "3"]
        )
        == 0
    )
    assert "22 duplicate(s) skipped" in capsys.readouterr().err
    assert "in 3 processes" in caplog.text
    assert (
        rose_main(
            ["replay", *logs, "--into", "file", "--out", str(tmp_path / "ser"), "--jobs", "1"]
        )
        == 0
    )
    for name in runs:
        assert (tmp_path / "par" / f"{name}.jsonl").read_bytes() == (
            tmp_path / "ser" / f"{name}.jsonl"
        ).read_bytes()
    # a line whose envelope cannot be read without JSON: no split, same result
    (tmp_path / "odd.jsonl").write_text('{"run": "p1", "v": 1}\n')
    assert sinks.replay.plan_groups(sorted(tmp_path.glob("*.jsonl")), 3) is None


def test_rose_bus_endpoint_is_explained_to_tools(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROSE_BUS", "tcp://127.0.0.1:5555")
    assert rose_main(["sink", "file", "--out", "o"]) == 2
    assert "ROSE_BUS is an endpoint" in capsys.readouterr().err


def test_publish_endpoint_without_transport(tmp_path, capsys):
    write_log(tmp_path / "r.jsonl", run_events("r", 1))
    assert rose_main(["replay", str(tmp_path / "r.jsonl"), "--publish", "login:5555"]) == 2
    assert "needs its transport, e.g. tcp://login:5555" in capsys.readouterr().err
