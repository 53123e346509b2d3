"""Acknowledged delivery: nothing lost, nothing silent, from the learner to the store."""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
import textwrap

import numpy as np

from bus import BrokerThread, BusClient, BusTracker
from cli.main import main as rose_main
from rose.eventlog import read_events
from rose.events import MAX_EVENT_BYTES, decode, encode, iteration_event
from rose.tracking import EventContext, IterationState, PipelineManifest
from tests.polling import free_port, wait_until

from .conftest import REPO

MANIFEST = PipelineManifest(learner_type="Test")


def _state(i: int, **extra) -> IterationState:
    return IterationState(iteration=i, state={"loss": 1.0 / (i + 1), **extra})


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "not acknowledged by the broker" in line]


def _replay_command(warning: str) -> list[str]:
    """The `rose replay ... --publish ...` command a warning tells the user to run."""
    match = re.search(r"deliver them with: (rose replay .*)$", warning)
    assert match, warning
    argv = shlex.split(match.group(1))
    assert argv[:2] == ["rose", "replay"] and "--publish" in argv
    return argv[1:]


def _run(script: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        text=True,
    )


def test_inline_tracker_with_the_broker_down_warns_once_and_replay_delivers(
    tmp_path, _fallback_dir
):
    """As the docs show it: learner.add_tracker(BusTracker(ep)), no reference, no broker."""
    ports = [free_port() for _ in range(3)]
    eps = [f"tcp://127.0.0.1:{p}" for p in ports]
    proc = _run(
        f"""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor
        from radical.asyncflow import WorkflowEngine
        from rhapsody.backends import ConcurrentExecutionBackend
        from bus import BusTracker
        from tests.bus.conftest import build_learner

        async def main():
            backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(2))
            engine = await WorkflowEngine.create(backend, work_dir={str(tmp_path)!r})
            learner = build_learner(engine)
            learner.add_tracker(BusTracker({eps[0]!r}))
            async for _ in learner.start(max_iter=3):
                pass
            print(learner.run_id)
            await engine.shutdown()

        asyncio.run(main())
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    run = proc.stdout.split()[-1]
    (warning,) = _warnings(proc.stderr)
    assert "5 event(s)" in warning and "never answered" in warning
    fallback = _fallback_dir / f"{run}.jsonl"
    assert [e["seq"] for e in read_events(fallback)] == list(range(5))

    # The command in the warning, run as given, delivers every event to the broker.
    with BrokerThread(tmp_path / "store", *eps) as broker:
        assert rose_main(_replay_command(warning)) == 0
        with BusClient(broker.backend, broker.replay) as client:
            assert [e.seq for e in client.run_events(run)] == list(range(5))


def test_an_unreferenced_tracker_warns_at_interpreter_exit(tmp_path, _fallback_dir):
    port = free_port()
    proc = _run(
        f"""
        from bus import BusTracker
        from rose.tracking import IterationState, PipelineManifest

        def work():
            tracker = BusTracker("tcp://127.0.0.1:{port}")
            tracker.on_start(PipelineManifest(learner_type="X"))
            tracker.on_iteration(IterationState(iteration=0))
            print(tracker._own_run)

        work()  # the tracker is garbage once this returns; its events are not
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    run = proc.stdout.split()[-1]
    (warning,) = _warnings(proc.stderr)
    assert "2 event(s)" in warning and str(_fallback_dir / f"{run}.jsonl") in warning
    assert [e["seq"] for e in read_events(_fallback_dir / f"{run}.jsonl")] == [0, 1]


def test_close_returns_once_the_broker_acknowledged_everything(broker, client, _fallback_dir):
    tracker = BusTracker(broker.frontend)
    n = 2000
    tracker.on_start(MANIFEST)
    for i in range(n - 2):
        tracker.on_iteration(_state(i))
    tracker.on_stop(None, "max_iter_reached")
    tracker.close()
    # No waiting here: close() returned only after the broker had stored and fsynced all.
    assert client.stats()["runs"] == {tracker._own_run: n - 1}
    assert tracker.acknowledged == n and tracker.fallback == 0 and tracker.dropped == 0
    assert client.stats()["acks"] >= 1
    assert not _fallback_dir.exists()


def test_opting_out_of_the_fallback_drops_and_says_so(tmp_path, caplog, _fallback_dir):
    tracker = BusTracker(
        f"tcp://127.0.0.1:{free_port()}", fallback=False, start_wait_ms=0, unreachable_ms=100
    )
    with caplog.at_level(logging.WARNING, logger="bus.tracker"):
        tracker.on_start(MANIFEST)
        tracker.on_iteration(_state(0))
        tracker.close()
    assert tracker.dropped == 2 and tracker.fallback == 0
    assert any("2 event(s) were dropped" in r.getMessage() for r in caplog.records)
    assert not _fallback_dir.exists()


def test_a_50_mb_event_is_kept_whole_locally_and_never_sent(broker, client, caplog, _fallback_dir):
    big = np.arange(50 * 1024 * 1024 // 8, dtype=np.float64)
    tracker = BusTracker(broker.frontend)
    with caplog.at_level(logging.WARNING, logger="bus.tracker"):
        tracker.on_start(MANIFEST)
        tracker.on_iteration(_state(0))
        tracker.on_iteration(_state(1, weights=big))
        for i in range(2, 6):
            tracker.on_iteration(_state(i))
        tracker.close()
    run = tracker._own_run
    # Everything else is acknowledged despite the hole at seq 2; nothing was re-sent.
    assert tracker.oversized == 1 and tracker.acknowledged == 6 and tracker.fallback == 0
    assert tracker.sent == 6 and tracker.resent == 0 and tracker.dropped == 0
    stats = client.stats()
    assert stats["received"] == 6 and stats["rejected"] == 0
    assert [e.seq for e in client.run_events(run)] == [0, 1, 3, 4, 5, 6]
    (warning,) = [r.getMessage() for r in caplog.records if "over the bus limit" in r.getMessage()]
    assert "state['weights']" in warning and f"{run}.oversized.jsonl" in warning
    (kept,) = read_events(_fallback_dir / f"{run}.oversized.jsonl")
    assert kept["seq"] == 2 and np.array_equal(kept["body"]["state"]["weights"], big)


def test_an_event_just_under_the_limit_is_stored_written_by_the_file_sink_and_replayed(
    broker, client, tmp_path
):
    arr = np.random.default_rng(0).random(13 * 1024 * 1024 // 8)  # 13 MB: 17 MB as JSON
    tracker = BusTracker(broker.frontend)
    tracker.on_start(MANIFEST)
    tracker.on_iteration(_state(0, weights=arr))
    tracker.close()
    assert tracker.acknowledged == 2 and tracker.oversized == 0
    run = tracker._own_run
    store = str(broker.bus_file.parent)
    assert rose_main(["replay", store, "--into", "file", "--out", str(tmp_path / "a")]) == 0
    written = tmp_path / "a" / f"{run}.jsonl"
    assert written.stat().st_size > MAX_EVENT_BYTES  # the line is longer than the event
    # ... and replay takes the file sink's output as it is.
    assert rose_main(["replay", str(written), "--into", "file", "--out", str(tmp_path / "b")]) == 0
    events = list(read_events(tmp_path / "b" / f"{run}.jsonl", strict=True))
    assert np.array_equal(events[1]["body"]["state"]["weights"], arr)


def test_the_broker_counts_an_oversized_event_from_a_foreign_publisher(tmp_path):
    """A learner never sends one; anything else that does is counted and logged."""
    import zmq

    from bus.wire import make_header, topic_for

    with BrokerThread(tmp_path / "store", max_event_bytes=1024) as broker:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(broker.frontend)
        with BusClient(broker.backend, broker.replay) as client:
            event = iteration_event(EventContext("r", 0, 1.0), _state(0))
            frames = [topic_for("r", "iteration"), make_header("r", 0, "iteration")]
            payload = encode(event) + b"\x00" * 3000  # 3x the limit: counted, not cut off
            assert wait_until(
                lambda: (
                    sock.send_multipart([*frames, payload], zmq.NOBLOCK),
                    client.stats()["rejected_by"].get("oversized", 0) >= 1,
                )[1]
            )
            assert client.stats()["stored"] == 0
        sock.close()
        ctx.term()
    assert decode(encode(event)) == event


def test_a_late_broker_within_the_budget_loses_nothing(tmp_path, _fallback_dir):
    """Events sent before the broker exists are acknowledged once it comes up."""
    ports = [free_port() for _ in range(3)]
    eps = [f"tcp://127.0.0.1:{p}" for p in ports]
    tracker = BusTracker(eps[0], start_wait_ms=0)
    tracker.on_start(MANIFEST)
    for i in range(100):
        tracker.on_iteration(_state(i))
    assert tracker.acknowledged == 0
    with BrokerThread(tmp_path / "store", *eps) as broker:
        assert tracker.flush()
        assert tracker.acknowledged == 101
        tracker.close()
        with BusClient(broker.backend, broker.replay) as client:
            assert [e.seq for e in client.run_events(tracker._own_run)] == list(range(101))
    assert tracker.fallback == 0 and not _fallback_dir.exists()


def test_replay_publish_of_many_runs_waits_for_every_ack(broker, client, tmp_path):
    from rose.eventlog import EventLogWriter

    log_path = tmp_path / "many.jsonl"
    with EventLogWriter(log_path) as writer:
        for r in range(150):
            for seq in range(3):
                ctx = EventContext(f"run{r:03d}", seq, 1.0)
                writer.append(iteration_event(ctx, _state(seq)))
    assert rose_main(["replay", str(log_path), "--publish", broker.frontend]) == 0
    assert client.stats()["stored"] == 450  # acknowledged, so already stored
    assert rose_main(["replay", str(log_path), "--publish", broker.frontend]) == 0  # dupes
    assert client.stats()["stored"] == 450


def test_broker_down_memory_stays_bounded_and_the_fallback_log_holds_all(_fallback_dir):
    tracker = BusTracker(f"tcp://127.0.0.1:{free_port()}", max_pending=100, start_wait_ms=0)
    tracker.on_start(MANIFEST)
    for i in range(999):
        tracker.on_iteration(_state(i))
        assert len(tracker._box.unacked) <= 100 and len(tracker._box.pending) <= 100
    tracker.close()
    assert tracker.fallback == 1000 and tracker.dropped == 0
    logged = read_events(_fallback_dir / f"{tracker._own_run}.jsonl")
    assert [e["seq"] for e in logged] == list(range(1000))


def test_a_missed_acknowledgement_is_recovered_by_resending_one_event(zctx):
    """A broker that lost its ack: a duplicate makes it acknowledge again."""
    import threading

    import msgpack
    import zmq

    from bus.wire import make_ack

    port = free_port()
    stop = threading.Event()
    seen: list[int] = []

    def peer() -> None:  # a minimal broker that stays silent until it sees a duplicate
        sock = zctx.socket(zmq.XSUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://127.0.0.1:{port}")
        sock.send(b"\x01")
        while not stop.is_set():
            if sock.poll(20):
                _topic, header, _payload = sock.recv_multipart()
                head = msgpack.unpackb(header)
                if head["seq"] in seen:
                    sock.send(make_ack({head["run"]: (len(set(seen)), max(seen), len(seen))}))
                seen.append(head["seq"])
        sock.close()

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        tracker = BusTracker(f"tcp://127.0.0.1:{port}", start_wait_ms=5000, fallback=False)
        tracker.on_start(MANIFEST)
        tracker.on_iteration(_state(0))
        assert tracker.flush()
        assert tracker.acknowledged == 2 and tracker.resent >= 1
        assert sorted(set(seen)) == [0, 1]
        tracker.close()
        assert tracker.dropped == 0
    finally:
        stop.set()
        thread.join(5)


def test_replay_publish_without_a_broker_fails_soon_and_says_so(tmp_path, capsys):
    from rose.eventlog import EventLogWriter

    log_path = tmp_path / "run.jsonl"
    with EventLogWriter(log_path) as writer:
        for seq in range(20):
            writer.append(iteration_event(EventContext("r1", seq, 1.0), _state(seq)))
    argv = ["replay", str(log_path), "--publish", f"tcp://127.0.0.1:{free_port()}"]
    assert rose_main(argv) == 1
    err = capsys.readouterr().err
    assert "20 not delivered" in err and "did not take every event" in err
