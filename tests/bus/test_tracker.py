"""BusTracker on its own: bounded buffering, spool, re-send after a broker restart, no raising."""

from __future__ import annotations

import logging

import pytest
import zmq

from bus import BrokerThread, BusClient, BusTracker
from rose.eventlog import read_events
from rose.tracking import IterationState, PipelineManifest
from tests.polling import free_port, wait_until

MANIFEST = PipelineManifest(learner_type="Test")


def _state(i: int) -> IterationState:
    return IterationState(iteration=i, state={f"k{j}": j * 0.5 for j in range(20)})


def test_a_stalled_broker_fills_the_bounded_buffer_then_the_fallback_log(
    tmp_path, zctx, caplog, _fallback_dir
):
    # A "broker" that subscribes but never reads: the socket's HWM is reached.
    stalled = zctx.socket(zmq.XSUB)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.RCVHWM, 10)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    port = stalled.bind_to_random_port("tcp://127.0.0.1")
    stalled.send(b"\x01")
    spool = tmp_path / "spool.jsonl"
    tracker = BusTracker(
        f"tcp://127.0.0.1:{port}",
        spool=spool,
        sndhwm=10,
        max_pending=500,
        flush_timeout_ms=100,
    )
    # The stalled side must process its connection once to send the subscription.
    assert wait_until(
        lambda: stalled.getsockopt(zmq.EVENTS) is not None and tracker.flush(10)
        and tracker.subscriptions == 1
    )
    n = 20_000
    with caplog.at_level(logging.WARNING, logger="bus.tracker"):
        tracker.on_start(MANIFEST)
        for i in range(n - 2):
            tracker.on_iteration(_state(i))
            # memory stays bounded: the rest is on disk
            assert len(tracker._box.unacked) <= 500 and len(tracker._box.pending) <= 500
        tracker.on_stop(None, "max_iter_reached")
        tracker.close()
    assert tracker.subscriptions == 1
    # never acknowledged, so every event is in the fallback log, in order; none is lost
    assert tracker.acknowledged == 0 and tracker.dropped == 0 and tracker.fallback == n
    assert tracker.spooled == n
    assert [e["seq"] for e in read_events(spool)] == list(range(n))
    fallback = _fallback_dir / f"{tracker._own_run}.jsonl"
    assert [e["seq"] for e in read_events(fallback)] == list(range(n))
    warnings = [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert len(warnings) == 1
    assert f"{n} event(s)" in warnings[0]
    assert f"rose replay {fallback} --publish tcp://127.0.0.1:{port}" in warnings[0]


def test_events_before_the_broker_starts_are_delivered_once_it_does(tmp_path):
    ports = (free_port(), free_port(), free_port())
    eps = [f"tcp://127.0.0.1:{p}" for p in ports]
    tracker = BusTracker(eps[0], start_wait_ms=50, flush_timeout_ms=10_000)
    tracker.on_start(MANIFEST)
    tracker.on_iteration(_state(0))
    assert tracker.sent == 0 and tracker.pending == 2
    with BrokerThread(tmp_path / "store", *eps) as broker:
        tracker.on_stop(None, "stopped")  # flushes: waits (bounded) for the subscription
        tracker.close()
        assert tracker.sent == 3 and tracker.dropped == 0
        assert tracker.acknowledged == 3 and tracker.fallback == 0
        with BusClient(broker.backend, broker.replay) as client:
            assert wait_until(lambda: client.stats()["stored"] == 3)
            assert [e.seq for e in client.run_events(tracker._own_run)] == [0, 1, 2]


def test_recent_events_are_resent_when_the_broker_comes_back(tmp_path):
    ports = (free_port(), free_port(), free_port())
    eps = [f"tcp://127.0.0.1:{p}" for p in ports]
    store = tmp_path / "store"
    tracker = BusTracker(eps[0], flush_timeout_ms=10_000)
    with BrokerThread(store, *eps):
        tracker.on_start(MANIFEST)
        for i in range(50):
            tracker.on_iteration(_state(i))
    for i in range(50, 100):  # broker down: queued in the socket or locally
        tracker.on_iteration(_state(i))
    with BrokerThread(store, *eps) as broker:
        tracker.on_stop(None, "max_iter_reached")
        tracker.close()
        # What the first broker had not acknowledged was re-sent (a graceful stop may
        # have acknowledged everything, so resent may be 0); the store check is exact.
        assert tracker.subscriptions == 2 and tracker.dropped == 0
        assert tracker.acknowledged == 102 and tracker.fallback == 0
        with BusClient(broker.backend, broker.replay) as client:
            assert wait_until(lambda: client.stats()["runs"].get(tracker._own_run) == 101)
            assert [e.seq for e in client.run_events(tracker._own_run)] == list(range(102))


def test_callbacks_never_raise_into_the_learner(broker, caplog, _fallback_dir):
    tracker = BusTracker(broker.frontend, flush_timeout_ms=300)
    tracker.on_start(MANIFEST)

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("socket exploded")

    real = tracker._sock
    tracker._sock = Broken()
    tracker._next_check = 0.0
    with caplog.at_level(logging.ERROR, logger="bus.tracker"):
        tracker.on_iteration(_state(0))
        tracker.on_iteration(_state(1))
        tracker.on_stop(None, "error")
    assert tracker.dropped == 3
    assert len([r for r in caplog.records if "BusTracker failed" in r.getMessage()]) == 1
    tracker._sock = real
    tracker.close()
    tracker.close()  # idempotent
    before = tracker.fallback
    tracker.on_iteration(_state(2))  # after close: into the fallback log, not raised
    assert tracker.dropped == 3 and tracker.fallback == before + 1
    after = list(read_events(_fallback_dir / f"{tracker._own_run}.jsonl"))
    assert after[-1]["body"]["iteration"] == 2


def test_unplain_values_travel_as_repr(broker, client):
    tracker = BusTracker(broker.frontend)
    tracker.on_start(MANIFEST)
    tracker.on_iteration(IterationState(iteration=0, state={"obj": object(), "n": 1}))
    tracker.close()
    assert wait_until(lambda: client.stats()["stored"] == 2)


def test_configuration_mistakes_fail_at_construction(tmp_path, monkeypatch):
    monkeypatch.delenv("ROSE_BUS", raising=False)
    with pytest.raises(ValueError, match="needs the broker"):
        BusTracker()
    with pytest.raises(ValueError, match="not both"):
        BusTracker("tcp://127.0.0.1:1", bus=tmp_path / "bus.json")
    with pytest.raises(ValueError, match="start the broker first"):
        BusTracker(bus=tmp_path / "bus.json")
    with pytest.raises(ValueError, match="bad endpoint"):
        BusTracker("nonsense")
    with pytest.raises(ValueError, match="max_pending"):
        BusTracker("tcp://127.0.0.1:1", max_pending=0)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        BusTracker("tcp://127.0.0.1:1", fallback=tmp_path / "afile")


def test_bus_file_and_environment(broker, monkeypatch, client):
    monkeypatch.setenv("ROSE_BUS", str(broker.bus_file))
    for tracker in (BusTracker(), BusTracker(bus=broker.bus_file)):
        assert tracker.endpoint == broker.frontend
        tracker.on_start(MANIFEST)
        tracker.close()
    assert wait_until(lambda: client.stats()["stored"] == 2)


def test_spool_path_ending_in_slash_is_a_directory(tmp_path):
    from bus import BusTracker
    from rose.tracking import PipelineManifest

    t = BusTracker("tcp://127.0.0.1:1", spool=f"{tmp_path}/spool/", start_wait_ms=0)
    t.on_start(PipelineManifest(learner_type="X"))
    t.close()
    (log,) = (tmp_path / "spool").iterdir()
    assert log.suffix == ".jsonl"


def test_the_spool_writes_each_event_as_it_was_sent(tmp_path):
    """Written from the event the tracker built (no msgpack round trip), except where the
    learner may still change a value in place (an array): those lines come from the sent bytes."""
    import numpy as np

    from rose.events import decode, encode, from_json_line, iteration_event, to_json_line
    from rose.tracking import EventContext, delivering

    spool = tmp_path / "spool.jsonl"
    tracker = BusTracker(f"tcp://127.0.0.1:{free_port()}", spool=spool, start_wait_ms=0,
                         flush_timeout_ms=0, fallback=tmp_path / "fallback")  # fmt: skip
    weights = np.zeros(4)
    sent = []
    for i in range(3):
        ctx = EventContext(run="spooled", seq=i, ts=1.0 + i)
        state = IterationState(iteration=i, state={"loss": 0.5 / (i + 1), "w": weights,
                                                   "nested": {"k": [i, "x", None]}})  # fmt: skip
        sent.append(decode(encode(iteration_event(ctx, state))))
        with delivering(ctx):
            tracker.on_iteration(state)
        weights += 1.0  # the learner changes its array in place after the callback
    external = dict(sent[2], seq=3)
    tracker.emit(external)  # not built by the tracker: written from its bytes
    external["body"] = {}  # ... so changing it afterwards changes nothing
    tracker.close()
    lines = spool.read_text().splitlines(keepends=True)
    assert lines == [to_json_line(e) for e in [*sent, dict(sent[2], seq=3)]]
    assert [from_json_line(line)["body"]["state"]["w"].tolist() for line in lines[:3]] == [
        [0.0] * 4, [1.0] * 4, [2.0] * 4
    ]
    assert tracker.spooled == 4 and tracker.dropped == 0


def test_events_the_fallback_log_cannot_take_are_counted_lost_and_told(tmp_path, caplog):
    """Broker unreachable and the fallback file unwritable: the events are lost, and
    the tracker says how many instead of pointing at a log that does not hold them."""
    from rose.tracking import EventContext, delivering

    fallback = tmp_path / "fallback"
    (fallback / "lostrun.jsonl").mkdir(parents=True)  # the run's log path is taken: writes fail
    tracker = BusTracker(f"tcp://127.0.0.1:{free_port()}", start_wait_ms=0,
                         flush_timeout_ms=0, fallback=fallback)  # fmt: skip
    for i in range(3):
        with delivering(EventContext(run="lostrun", seq=i, ts=1.0 + i)):
            tracker.on_iteration(IterationState(iteration=i, state={"x": float(i)}))
    with caplog.at_level(logging.WARNING, logger="bus.tracker"):
        tracker.close()
    assert tracker.fallback == 3 and tracker.dropped == 3
    told = [r.getMessage() for r in caplog.records if "could not be written" in r.getMessage()]
    assert len(told) == 1 and "3 of 3 event(s)" in told[0]
    assert not any("deliver them with" in r.getMessage() for r in caplog.records)
