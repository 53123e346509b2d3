"""A damaged store, a store that lost its tail, a lost store.json: lose only what is damaged.

The broker and the sinks are real processes.  The damage is done to the files
while the broker is down, the way a bad disk block or a power cut does it:
bytes flipped inside one record, the unsynced last records gone, the metadata
file gone.  Afterwards every intact event is served, every event of a new run
reaches every sink exactly once, and each loss is reported with its numbers.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from bus.store import EventStore
from rose.events import encode, to_json_line
from tests.sinks.helpers import run_events

from .conftest import REPO, REPORT, SCRUBBED_ENV, Daemon, Stack, _sink_ready, wait_until

_REC = struct.Struct("<II")


def record_starts(segment) -> list[int]:
    """Byte position of every record in a segment file (walking the length fields)."""
    data = segment.read_bytes()
    out, pos = [], 0
    while pos + _REC.size <= len(data):
        out.append(pos)
        pos += _REC.size + _REC.unpack_from(data, pos)[0]
    return out


def only_segment(store_dir):
    (seg,) = (store_dir / "segments").glob("*.seg")
    return seg


def rose(*argv: str, cwd, timeout: float = 90, **extra_env: str) -> subprocess.CompletedProcess:
    """``rose ARGV`` as a process (bounded); its completed process with text output."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(PYTHONPATH=str(REPO), **extra_env)
    return subprocess.run(
        [sys.executable, "-m", "cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines(path) -> list[str]:
    return path.read_text().splitlines(keepends=True) if path.exists() else []


@pytest.mark.timeout(180)
def test_a_flipped_record_costs_only_itself(tmp_path):
    """600 records, 4 bytes flipped inside record 300 (its framing intact): 599 survive."""
    runs = {f"r{i}": run_events(f"r{i}", 198) for i in range(3)}  # 200 events each
    order = [runs[r][k] for k in range(200) for r in sorted(runs)]
    store_dir = tmp_path / "store"
    store = EventStore(store_dir)
    for e in order:
        store.add(e["run"], e["seq"], e["kind"], encode(e))
    store.close()
    seg = only_segment(store_dir)
    starts = record_starts(seg)
    assert len(starts) == 600
    data = bytearray(seg.read_bytes())
    for i in range(4):
        data[starts[301] - 12 + i] ^= 0x5A  # inside record 300's payload
    seg.write_bytes(bytes(data))
    victim = order[300]

    broker = Daemon("broker", ["bus", "--store", str(store_dir), "--frontend",
                               "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                               "--replay", "tcp://127.0.0.1:*"], tmp_path)  # fmt: skip
    broker.ready = lambda d: (store_dir / "bus.json").exists() and (
        json.loads((store_dir / "bus.json").read_text()).get("pid") == d.pid
    )
    state, out = tmp_path / "state", tmp_path / "out"
    sink = Daemon(
        "file-sink",
        ["sink", "file", "--out", str(out), "--state", str(state), "--bus",
         str(store_dir / "bus.json"), "--gap-grace", "0.5"],
        tmp_path,
        ready=_sink_ready(state),
    )  # fmt: skip
    try:
        broker.start()
        sink.start()
        want = {
            run: [to_json_line(e) for e in evs if e is not victim] for run, evs in runs.items()
        }
        wait_until(
            lambda: all(lines(out / f"{r}.jsonl") == w for r, w in want.items()),
            "the fresh sink to hold the 599 intact events",
        )

        def status_report() -> dict:
            status = rose("status", "--bus", str(store_dir / "bus.json"), "--state",
                          str(state), "--json", cwd=tmp_path)  # fmt: skip
            return json.loads(status.stdout)

        # The sink reports the gap once its grace has passed, in its next status write.
        wait_until(
            lambda: status_report()["sinks"][0]["counters"]["gaps"] >= 1,
            "the sink to report the damaged event's gap",
        )
        report = status_report()
        assert report["broker"]["events"] == 600
        (lost,) = report["broker"]["recovered"]
        assert (lost["first"], lost["last"]) == (300, 300)
        assert report["sinks"][0]["counters"]["gaps"] == 1
        assert report["sinks"][0]["gap_reports"] == [
            {"run": victim["run"], "from": victim["seq"], "to": victim["seq"]}
        ]
        assert sink.terminate() == 0 and broker.terminate() == 0
    finally:
        sink.kill()
        broker.kill()
    log = broker.log()
    damage_lines = [ln for ln in log.splitlines() if "damaged stretch" in ln]
    assert len(damage_lines) == 1 and "offsets 300..300 (1 event(s))" in damage_lines[0], log
    assert "Traceback" not in log + sink.log()
    (q,) = (store_dir / "quarantine").iterdir()
    assert q.name.endswith(".300-300.damaged")
    assert q.read_bytes() == bytes(data[starts[300] : starts[301]])

    # With the broker down, a replay of the store reads the same 599, and reports nothing new.
    out2 = tmp_path / "out2"
    res = rose("replay", str(store_dir), "--into", "file", "--out", str(out2), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "599 applied" in res.stderr and "damaged" not in res.stderr
    assert all(lines(out2 / f"{r}.jsonl") == w for r, w in want.items())
    REPORT.append(
        "flipped record 300 of 600: 599 events kept and applied by a fresh sink and by "
        "rose replay STORE; 1 quarantined (offsets 300..300), reported once"
    )


@pytest.mark.timeout(240)
def test_after_a_lost_tail_old_sinks_get_every_new_event_once(tmp_path):
    """A power cut takes the last 50 records; new offsets go below the sinks' checkpoints."""
    stack = Stack(tmp_path, mlflow=False)
    live_state, live_out = tmp_path / "live-state", tmp_path / "live-out"
    live = Daemon(  # stays up across the broker's crash
        "live-sink",
        ["-v", "sink", "file", "--out", str(live_out), "--state", str(live_state), "--bus",
         str(stack.bus_file), "--retry-max", "0.5", "--timeout-ms", "2000"],
        tmp_path,
        ready=_sink_ready(live_state),
    )  # fmt: skip
    try:
        stack.start()
        live.start()
        alpha = stack.learner("alpha", 98)  # 100 events, offsets 0..99
        alpha.result()
        wait_until(stack.file_sink_complete, "the file sink to hold alpha")
        wait_until(
            lambda: lines(live_out / f"{alpha.result()['run']}.jsonl")
            == lines(stack.out / f"{alpha.result()['run']}.jsonl"),
            "the live sink to hold alpha",
        )
        assert stack.file_sink.terminate() == 0
        ckpt = json.loads((stack.file_state / "checkpoint.json").read_text())
        assert ckpt["offset"] == 100
        stack.broker.kill9()
        seg = only_segment(stack.store)
        os.truncate(seg, record_starts(seg)[50])  # the unsynced tail is gone: offsets 50..99
        stack.broker.start()
        beta = stack.learner("beta", 18)  # 20 events at offsets 50..69, below the checkpoints
        beta_run = beta.result()["run"]
        stack.file_sink.start()
        want = lines(stack.ref / f"{beta_run}.jsonl")
        assert len(want) == 20
        for out in (stack.out, live_out):
            wait_until(lambda o=out: lines(o / f"{beta_run}.jsonl") == want, f"beta in {out}")
        status = rose("status", "--bus", str(stack.bus_file), "--state", str(stack.file_state),
                      "--state", str(live_state), cwd=tmp_path)  # fmt: skip
        assert status.stdout.count("the store lost 50 event(s) after offset 49") == 2, (
            status.stdout
        )
        assert stack.file_sink.terminate() == 0 and live.terminate() == 0
    finally:
        live.kill()
        stack.close()
    for d in (stack.file_sink, live):
        assert d.log().count("the store lost 50 event(s) after offset 49") == 1, d.log()
        assert "Traceback" not in d.log()
    # alpha's 100 events stay where they were applied; beta's 20 arrived exactly once
    alpha_run = alpha.result()["run"]
    for out in (stack.out, live_out):
        assert lines(out / f"{alpha_run}.jsonl") == lines(stack.ref / f"{alpha_run}.jsonl")
        assert lines(out / f"{beta_run}.jsonl") == want
    REPORT.append(
        "lost tail (last 50 of 100 records cut): 20/20 events of a new run applied exactly "
        "once by a restarted sink and by a sink that stayed up; loss reported by both"
    )


@pytest.mark.timeout(180)
def test_a_missing_store_json_is_recovered_or_refused_loudly(tmp_path):
    stack = Stack(tmp_path, mlflow=False)
    try:
        stack.start()
        stack.learner("alpha", 18)
        stack.wait_delivered()
        store_id = json.loads(stack.bus_file.read_text())["store_id"]
        assert stack.broker.terminate() == 0
        (stack.store / "store.json").unlink()
        stack.broker.start()
        assert json.loads(stack.bus_file.read_text())["store_id"] == store_id
        assert "store.json was missing" in stack.broker.log()
        assert stack.broker.terminate() == 0
        # Neither store.json nor bus.json: refused with one line saying what to do.
        (stack.store / "store.json").unlink()
        stack.bus_file.unlink()
        res = rose("bus", "--store", str(stack.store), "--frontend", "tcp://127.0.0.1:*",
                   "--backend", "tcp://127.0.0.1:*", "--replay", "tcp://127.0.0.1:*",
                   cwd=tmp_path)  # fmt: skip
        assert res.returncode != 0 and "Traceback" not in res.stderr
        (line,) = [ln for ln in res.stderr.splitlines() if "error" in ln]
        assert "store.json is missing" in line and "--new-store-id" in line
        assert not (stack.store / "store.json").exists()
        stack.broker.argv.append("--new-store-id")
        stack.broker.start()
        new_id = json.loads(stack.bus_file.read_text())["store_id"]
        assert new_id != store_id
        # The sink sees a new store: it re-reads it and skips all it holds.
        wait_until(lambda: "the broker store changed" in stack.file_sink.log() or
                   "reading the new store" in stack.file_sink.log(), "the sink to notice")  # fmt: skip
        stack.stop_all()
        stack.check_exactly_once("store.json lost, then --new-store-id")
    finally:
        stack.close()
