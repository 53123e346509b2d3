"""The broker: bad input never kills it, requests, dedupe, restart, the CLI process."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import Broker, BrokerThread, BusClient, BusError, BusTracker
from bus.wire import make_header, topic_for
from rose.events import SCHEMA_VERSION, decode
from rose.tracking import IterationState, PipelineManifest
from tests.polling import free_port, wait_until

from .conftest import REPO, BrokerProcess


def _publisher(zctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A raw learner-side socket that has seen the broker's subscription."""
    sock = zctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    sock.setsockopt(zmq.SNDHWM, 100_000)  # no silent HWM drops in these tests
    sock.connect(endpoint)
    assert sock.poll(10_000), "broker never subscribed"
    assert sock.recv() == b"\x01"
    return sock


def _valid(run: str, seq: int, kind: str = "iteration", payload: bytes = b"\x80") -> list[bytes]:
    return [topic_for(run, kind), make_header(run, seq, kind), payload]


def _request(
    zctx: zmq.Context, endpoint: str, frames: list[bytes], wait_ms: int = 5000
) -> dict | None:
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        if not sock.poll(wait_ms):
            return None
        return msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
    finally:
        sock.close(linger=0)


def test_bad_frames_are_counted_logged_once_and_skipped(tmp_path, zctx, caplog):
    caplog.set_level(logging.WARNING, logger="bus.broker")
    with BrokerThread(tmp_path / "store", max_event_bytes=1024) as broker:
        pub = _publisher(zctx, broker.frontend)
        bad_version = msgpack.packb(
            {"v": SCHEMA_VERSION + 1, "run": "r1", "seq": 0, "kind": "start"}
        )
        hostile = msgpack.packb({"v": SCHEMA_VERSION, "run": "../../x", "seq": 0, "kind": "start"})
        for frames in [
            [b"garbage"],
            [b"rose.r1.start", b"\xc1\xc1 not msgpack", b"x"],
            [b"rose.r1.start", b"\x93\x01\x02\x03", b"x"],  # a list, not a map
            [b"rose.r1.start", bad_version, b"x"],
            [b"rose.r1.start", bad_version, b"x"],
            [b"rose.../../x.start", hostile, b"x"],
            [b"rose.other.start", make_header("r1", 0, "start"), b"x"],  # topic mismatch
            _valid("r1", 1, payload=b"y" * 1500),  # over max_event_bytes: counted
            [b"a", b"b"],
        ]:
            pub.send_multipart(frames)
        pub.send_multipart(_valid("r1", 0, "start"))
        with BusClient(broker.backend, broker.replay) as client:
            assert wait_until(lambda: client.stats()["stored"] == 1)
            stats = client.stats()
            assert stats["rejected_by"] == {
                "garbage": 5,
                "version": 2,
                "bad_run": 1,
                "oversized": 1,
            }
            assert stats["rejected"] == 9 and stats["received"] == 10

            # Beyond ZMQ_MAXMSGSIZE libzmq cuts the sender off; the broker keeps serving.
            pub.send_multipart(_valid("r1", 2, payload=b"z" * 1_000_000))
            other = _publisher(zctx, broker.frontend)
            other.send_multipart(_valid("r1", 3))
            assert wait_until(lambda: client.stats()["stored"] == 2)
            assert [e.seq for e in client.run_events("r1")] == [0, 3]
    warnings = [r.getMessage() for r in caplog.records if "rejected a message" in r.getMessage()]
    assert len(warnings) == 4  # once per reason, not once per message
    assert any("rejected 9 bad message(s)" in r.getMessage() for r in caplog.records)


def test_bad_requests_get_errors_and_the_broker_keeps_serving(broker, zctx):
    rep = broker.replay
    assert _request(zctx, rep, [b"", b"\xc1"])["ok"] is False
    assert _request(zctx, rep, [b"", msgpack.packb([1, 2])])["ok"] is False
    reply = _request(zctx, rep, [b"", msgpack.packb({"op": "nope", "id": 7})])
    assert reply == {"ok": False, "error": "unknown op 'nope'", "id": 7}
    reply = _request(zctx, rep, [b"", msgpack.packb({"op": "fetch", "from": -1})])
    assert reply["ok"] is False and "from" in reply["error"]
    reply = _request(zctx, rep, [b"", msgpack.packb({"op": "run_events", "run": "../x"})])
    assert reply["ok"] is False
    assert _request(zctx, rep, [b"no delimiter"], wait_ms=300) is None  # dropped, counted
    with BusClient(broker.backend, rep) as client:
        with pytest.raises(BusError, match="refused"):
            client.request("fetch", limit=0)
        stats = client.stats()
        assert stats["bad_requests"] == 7 and stats["requests"] == 8


def test_client_times_out_with_a_clear_error():
    with BusClient("tcp://127.0.0.1:1", f"tcp://127.0.0.1:{free_port()}", timeout_ms=200) as c:
        with pytest.raises(BusError, match="did not answer"):
            c.stats()
        with pytest.raises(BusError, match="did not answer"):
            c.fetch(0)


def test_dedupe_and_indexes_survive_a_restart(tmp_path, zctx):
    store = tmp_path / "store"
    with BrokerThread(store) as broker:
        pub = _publisher(zctx, broker.frontend)
        for seq in (0, 1, 2, 1, 0, 5):
            pub.send_multipart(_valid("r1", seq))
        pub.send_multipart(_valid("r2", 0, "start"))
        with BusClient(broker.backend, broker.replay) as client:
            assert wait_until(lambda: client.stats()["received"] == 7)
            stats = client.stats()
            assert stats["stored"] == 5 and stats["duplicates"] == 2
            store_id = client.store_id()
        pub.close(linger=0)
    with BrokerThread(store) as broker, BusClient(broker.backend, broker.replay) as client:
        assert client.store_id() == store_id
        runs = {r["run"]: r for r in client.runs()}
        assert runs["r1"] == {
            "run": "r1",
            "first_seq": 0,
            "last_seq": 5,
            "count": 4,
            "last_offset": 3,
        }
        assert runs["r2"]["count"] == 1
        pub = _publisher(zctx, broker.frontend)
        pub.send_multipart(_valid("r1", 2))  # stored before the restart: still a duplicate
        pub.send_multipart(_valid("r1", 3))
        assert wait_until(lambda: client.stats()["received"] == 2)
        assert [e.seq for e in client.run_events("r1")] == [0, 1, 2, 3, 5]
        assert [e.seq for e in client.run_events("r1", from_seq=2)] == [2, 3, 5]
        assert [e.offset for e in client.fetch(0)] == list(range(6))
        assert client.stats()["duplicates"] == 1


def test_second_broker_on_the_same_store_is_refused(broker, tmp_path):
    from bus import BrokerError

    with pytest.raises(BrokerError, match="in use by another broker"):
        BrokerThread(broker.broker.store_dir).start()


def test_cli_process_serves_and_exits_cleanly_on_sigterm_and_sigint(broker_process):
    for sig in (signal.SIGTERM, signal.SIGINT):
        broker_process.start()
        tracker = BusTracker(bus=broker_process.store / "bus.json")
        tracker.on_start(PipelineManifest(learner_type="L"))
        tracker.on_iteration(IterationState(iteration=0, state={"x": 1.0}))
        tracker.close()
        run = tracker._own_run
        with BusClient.from_file(broker_process.store / "bus.json") as client:
            assert wait_until(lambda c=client, r=run: c.stats()["runs"].get(r) == 1)
            events = [decode(e.payload) for e in client.run_events(run)]
            assert [e["kind"] for e in events] == ["start", "iteration"]
        broker_process.kill(sig)
        assert broker_process.proc.returncode == 0, broker_process.output()
        broker_process.output()
    with BusClient.from_file(broker_process.store / "bus.json") as client:
        pass  # the bus file stays behind, describing the last endpoints
    assert client.replay == broker_process.replay


def test_cli_reports_an_endpoint_in_use_in_one_line(tmp_path, broker):
    port = broker.frontend.rsplit(":", 1)[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "bus",
            "--store",
            str(tmp_path / "s2"),
            "--frontend",
            f"tcp://127.0.0.1:{port}",
            "--backend",
            "tcp://127.0.0.1:0",
            "--replay",
            "tcp://127.0.0.1:0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "cannot bind the frontend endpoint" in proc.stderr


def test_store_survives_kill9_of_a_busy_broker(tmp_path, zctx):
    """kill -9 while storing: the restarted broker has a gapless prefix, minus at most the tail."""
    bp = BrokerProcess(tmp_path / "store").start()
    try:
        pub = _publisher(zctx, bp.frontend)
        for seq in range(3000):
            pub.send_multipart(_valid("r1", seq))
        with BusClient(bp.backend, bp.replay) as client:
            assert wait_until(lambda: client.stats()["stored"] > 1000)
        bp.kill()
        pub.close(linger=0)
        bp.start()
        with BusClient(bp.backend, bp.replay) as client:
            seqs = [e.seq for e in client.run_events("r1")]
            assert len(seqs) > 1000 and seqs == list(range(len(seqs)))
            assert [e.offset for e in client.fetch(0, limit=10_000)] == list(range(len(seqs)))
        assert bp.stop() == 0
    finally:
        bp.kill()
        bp.output()


def test_fuzz_frontend_and_requests_never_kill_the_broker(broker, zctx):
    pub = _publisher(zctx, broker.frontend)
    dealer = zctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(broker.replay)
    client = BusClient(broker.backend, broker.replay)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        frames=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
        request=st.binary(max_size=300),
    )
    def throw(frames: list[bytes], request: bytes) -> None:
        pub.send_multipart(frames)
        dealer.send_multipart([b"", request])
        dealer.send_multipart([request])
        stats = client.stats()  # still answering
        assert stats["received"] == stats["stored"] + stats["duplicates"] + stats["rejected"]

    try:
        throw()
    finally:
        client.close()


def test_bad_options_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="Broker: hwm must be >= 1, got 0"):
        Broker(tmp_path, hwm=0)
    with pytest.raises(ValueError, match="max_event_bytes must be <="):
        Broker(tmp_path, max_event_bytes=2**40)
    with pytest.raises(TypeError, match="segment_byte"):
        Broker(tmp_path, segment_byte=10)


def test_a_failing_fsync_is_logged_once_retried_and_acknowledged_once_it_works(
    broker, monkeypatch, caplog
):
    """fsync fails (EIO on a sick disk): the broker keeps serving, acknowledges nothing
    until an fsync succeeds, and says so once. A disk that fails fsync cannot be made
    here without privileges, so os.fsync is replaced for the broker's store alone."""
    import errno

    import bus.store

    real_fsync, attempts = bus.store.os.fsync, []

    def failing(fd: int) -> None:
        attempts.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(bus.store.os, "fsync", failing)
    tracker = BusTracker(broker.frontend, fallback=False, flush_timeout_ms=500)
    with caplog.at_level(logging.ERROR, logger="bus.broker"):
        tracker.on_start(PipelineManifest(learner_type="L"))
        for i in range(5):
            tracker.on_iteration(IterationState(iteration=i, state={"x": float(i)}))
        assert not tracker.flush(500)  # stored with the OS, not on disk: not acknowledged
        assert wait_until(lambda: broker.broker.counters.store_errors >= 2)
    with BusClient(broker.backend, broker.replay) as client:
        assert client.stats()["stored"] == 6  # still serving
    assert attempts  # the broker tried, and is still trying
    assert [r.getMessage() for r in caplog.records if "fsync" in r.getMessage()] == [
        f"fsync of the store {broker.broker.store_dir} failed: [Errno 5] Input/output error"
    ]
    monkeypatch.setattr(bus.store.os, "fsync", real_fsync)
    assert tracker.flush(5000)
    assert tracker.acknowledged == 6
    tracker.close()
