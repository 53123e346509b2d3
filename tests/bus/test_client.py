"""BusClient.subscribe: catch-up, then live, exactly once, in offset order, gaps re-fetched."""

from __future__ import annotations

import pytest

from bus import BrokerThread, BusClient, BusTracker, StoreChangedError
from rose.events import decode
from rose.tracking import IterationState, PipelineManifest
from tests.polling import free_port, wait_until


def _publish(endpoint: str, n: int) -> str:
    tracker = BusTracker(endpoint, flush_timeout_ms=10_000)
    tracker.on_start(PipelineManifest(learner_type="T"))
    for i in range(n - 1):
        tracker.on_iteration(IterationState(iteration=i, state={"i": i}))
    tracker.close()
    assert tracker.dropped == 0
    return tracker._own_run


def _take(stream, n: int, max_idle: int = 50) -> list:
    out, idle = [], 0
    while len(out) < n and idle < max_idle:
        item = next(stream)
        if item is None:
            idle += 1
        else:
            out.append(item)
    return out


def test_catch_up_then_live_exactly_once(broker, client):
    run = _publish(broker.frontend, 100)
    assert wait_until(lambda: client.stats()["stored"] == 100)
    stream = client.subscribe(40, idle_timeout_ms=100)
    first = _take(stream, 60)
    assert [e.offset for e in first] == list(range(40, 100))
    assert [e.seq for e in first] == list(range(40, 100)) and {e.run for e in first} == {run}
    _publish(broker.frontend, 100)
    live = _take(stream, 100)
    assert [e.offset for e in live] == list(range(100, 200))
    assert decode(live[0].payload)["kind"] == "start"
    assert next(stream) is None  # idle: nothing more, nothing twice
    stream.close()


def test_gaps_from_a_slow_subscriber_are_refetched_from_the_store(tmp_path):
    # A tiny broker HWM: the broker drops live events for a subscriber that does not read.
    with (
        BrokerThread(tmp_path / "store", hwm=20) as broker,
        BusClient(broker.backend, broker.replay) as client,
    ):
        stream = client.subscribe(0, idle_timeout_ms=100)
        assert next(stream) is None
        _publish(broker.frontend, 3000)
        got = _take(stream, 3000)
        assert [e.offset for e in got] == list(range(3000))
        stream.close()


def test_a_replaced_store_is_noticed(tmp_path):
    eps = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    with BrokerThread(tmp_path / "a", *eps):
        client = BusClient(eps[1], eps[2], timeout_ms=2000)
        _publish(eps[0], 3)
        stream = client.subscribe(0, idle_timeout_ms=50)
        assert len(_take(stream, 3)) == 3
    with BrokerThread(tmp_path / "b", *eps), pytest.raises(StoreChangedError):
        for _ in range(200):
            next(stream)
    client.close()


def test_from_file_and_summaries(broker):
    run = _publish(broker.frontend, 5)
    with BusClient.from_file(broker.bus_file) as client:
        assert wait_until(lambda: client.stats()["stored"] == 5)
        assert client.store_id() == broker.store_id
        assert client.runs() == [
            {"run": run, "first_seq": 0, "last_seq": 4, "count": 5, "last_offset": 4}
        ]
        assert [e.seq for e in client.run_events(run, from_seq=3)] == [3, 4]
        assert [e.offset for e in client.fetch(2, limit=2)] == [2, 3]
        assert client.fetch(5) == []


def test_head_is_answered_from_what_the_client_knows(broker, client):
    from sinks.bus_source import BusSource

    _publish(broker.frontend, 10)
    assert wait_until(lambda: client.stats()["stored"] == 10)
    source = BusSource(client)
    asked = broker.broker.counters.requests
    assert [source.head_offset() for _ in range(20)] == [9] * 20  # from the stats reply
    assert broker.broker.counters.requests == asked
    stream = source.subscribe(0)
    assert [e.offset for e in _take(stream, 10)] == list(range(10))
    _publish(broker.frontend, 5)
    assert [e.offset for e in _take(stream, 5)] == list(range(10, 15))
    assert source.head_offset() == 14  # seen on the subscription, live or fetched
    asked = broker.broker.counters.requests
    assert source.next_offset() == 15  # asked now
    assert broker.broker.counters.requests == asked + 1
    stream.close()


def test_subscription_follows_one_run_by_prefix(broker, client):
    """What ``rose tail --run`` rides on: a topic prefix keeps one run, from the store on."""
    one, _other = _publish(broker.frontend, 4), _publish(broker.frontend, 3)
    assert wait_until(lambda: client.stats()["stored"] == 7)
    stream = client.subscribe(0, prefix=f"rose.{one}.", idle_timeout_ms=200)
    assert [(e.run, e.seq) for e in _take(stream, 4, max_idle=3)] == [(one, s) for s in range(4)]
    assert next(stream) is None  # nothing of the other run follows
    stream.close()
