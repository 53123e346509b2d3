"""The sink runtime against in-memory sources: order, dedupe, gaps, retries, checkpoints."""

from __future__ import annotations

import json
import random

import pytest

from bus.wire import StoredEvent
from rose.events import encode
from sinks.base import ApplyResult, RunSink, Sink
from sinks.memory import FOREVER, InMemorySink
from sinks.runtime import RuntimeConfig, SinkRuntime
from sinks.sources import ListSource, MemoryStore
from sinks.state import StateDir, StateDirBusy, read_status
from tests.polling import wait_until
from tests.sinks.helpers import ManualClock, RuntimeThread, fast_config, run_events


def seqs(n: int) -> list[int]:
    return list(range(n))


def test_applies_each_run_in_order_once():
    a, b = run_events("run-a", 4), run_events("run-b", 3)
    mixed = [e for pair in zip(a, b + [None] * 10, strict=False) for e in pair if e]
    sink = InMemorySink()
    counters = SinkRuntime(sink, ListSource(mixed)).run()
    assert sink.seqs("run-a") == seqs(6) and sink.seqs("run-b") == seqs(5)
    assert sink.events["run-a"] == a
    assert counters.applied == 11 and counters.duplicates == 0 and counters.gaps == 0
    assert sink.closed == {"run-a": 1, "run-b": 1} and sink.shut_down


def test_duplicates_and_reordering():
    events = run_events("r1", 8)
    shuffled = events + events[2:5]
    random.Random(4).shuffle(shuffled)
    sink = InMemorySink()
    counters = SinkRuntime(sink, ListSource(shuffled)).run()
    assert sink.events["r1"] == events
    assert counters.duplicates == 3 and counters.gaps == 0


def test_unfillable_gap_is_reported_at_the_end_of_a_log():
    events = run_events("r1", 5)
    sink = InMemorySink()
    counters = SinkRuntime(sink, ListSource(events[:2] + events[4:])).run()
    assert sink.seqs("r1") == [0, 1, 4, 5, 6]
    assert counters.gaps == 2


def test_gap_filled_from_the_store():
    store = MemoryStore()
    events = run_events("r1", 5)
    for e in events:
        store.append(e, live=e["seq"] not in (2, 3))
    sink = InMemorySink()
    with RuntimeThread(SinkRuntime(sink, store, config=fast_config())) as t:
        wait_until(lambda: len(sink.events["r1"]) == 7)
    assert sink.events["r1"] == events
    assert t.runtime.counters.filled == 2 and t.runtime.counters.gaps == 0


def test_gap_missing_from_the_store_is_reported_after_the_grace_period():
    store = MemoryStore()
    events = run_events("r1", 5)
    for e in events[:2] + events[3:]:
        store.append(e)
    clock = ManualClock()
    sink = InMemorySink()
    rt = SinkRuntime(sink, store, config=fast_config(gap_grace_ms=10_000), clock=clock)
    with RuntimeThread(rt):
        wait_until(lambda: len(sink.events["r1"]) == 2 and store.fill_requests > 0)
        assert rt.counters.gaps == 0  # still hoping for seq 2
        clock.advance(11)
        wait_until(lambda: len(sink.events["r1"]) == 6, what="gap skipped")
    assert rt.counters.gaps == 1
    assert rt.status()["gap_reports"] == [{"run": "r1", "from": 2, "to": 2}]


def test_retry_then_success_and_other_runs_unaffected():
    store = MemoryStore()
    sink = InMemorySink()
    sink.fail("slow", 2, times=3)
    clock = ManualClock()
    config = fast_config(retry_initial_ms=1000, retry_max_ms=4000)
    rt = SinkRuntime(sink, store, config=config, clock=clock)
    with RuntimeThread(rt):
        for e in run_events("slow", 4) + run_events("fine", 4):
            store.append(e)
        wait_until(lambda: len(sink.events["fine"]) == 6, what="the healthy run")
        # the batch raised: isolated event by event (on the sink's worker thread)
        wait_until(lambda: rt.counters.retries == 1, what="the first failure")
        assert sink.seqs("slow") == [0, 1]
        for attempt in range(1, 3):  # the batch that raised is retried at once, one by one
            wait_until(lambda a=attempt: rt.counters.retries == a, what=f"failure {attempt}")
            assert sink.seqs("slow") == [0, 1]
            clock.advance(4.5)  # past the capped backoff
        wait_until(lambda: len(sink.events["slow"]) == 6, what="the retried run")
    assert sink.seqs("slow") == seqs(6)
    assert rt.counters.retries == 2 and rt.counters.failed == 0
    assert sink.attempts[("slow", 2)] == 4


def test_retry_policy_gives_up_and_skips():
    sink = InMemorySink()
    sink.fail("r1", 3, times=FOREVER)
    config = fast_config(max_attempts=4)
    counters = SinkRuntime(sink, ListSource(run_events("r1", 5)), config=config).run()
    assert sink.seqs("r1") == [0, 1, 2, 4, 5, 6]
    assert counters.failed == 1 and counters.retries == 4
    assert sink.attempts[("r1", 3)] == 5  # the first batch, then 4 attempts alone


def test_reject_and_partial_results():
    sink = InMemorySink()
    sink.fail("r1", 2, how="reject")
    sink.fail("r1", 4, times=1, how="retry")
    counters = SinkRuntime(sink, ListSource(run_events("r1", 5)), config=fast_config()).run()
    assert sink.seqs("r1") == [0, 1, 3, 4, 5, 6]
    assert counters.failed == 1 and counters.retries == 1
    assert sink.attempts[("r1", 3)] == 1  # applied before the retried event: not repeated


def test_bad_and_hostile_events_are_counted_not_fatal():
    store = MemoryStore()
    store.append_raw("../../etc/x", 0, encode(run_events("x", 1)[0]))
    store.append_raw("r1", 0, b"\xc1garbage")
    good = run_events("r1", 2)
    store.append_raw("r1", 1, encode(good[0]))  # header and payload disagree
    for e in good[1:]:
        store.append(e)
    store.append_raw("r1", 0, encode(good[0]))  # a valid copy later changes nothing
    sink = InMemorySink()
    rt = SinkRuntime(sink, store, config=fast_config())
    with RuntimeThread(rt):
        wait_until(lambda: rt.counters.received == 7)
        wait_until(lambda: len(sink.events["r1"]) == 4)
    assert sink.events["r1"] == good  # bad copies never took a valid event's place
    assert rt.counters.invalid == 3
    assert list(sink.events) == ["r1"]


def test_checkpoint_resume_without_duplicates(tmp_path):
    store = MemoryStore()
    sink = InMemorySink()  # not idempotent: only the checkpoint prevents repeats
    for e in run_events("r1", 3):
        store.append(e)
    with RuntimeThread(SinkRuntime(sink, store, state_dir=tmp_path, config=fast_config())):
        wait_until(lambda: len(sink.events["r1"]) == 5)
    ckpt = json.loads((tmp_path / "checkpoint.json").read_text())
    assert ckpt["offset"] == 5 and ckpt["runs"] == {"r1": 5}
    assert ckpt["store_id"] == "memory-store"
    for e in run_events("r2", 2):
        store.append(e)
    rt = SinkRuntime(sink, store, state_dir=tmp_path, config=fast_config())
    with RuntimeThread(rt):
        wait_until(lambda: len(sink.events["r2"]) == 4)
    assert sink.seqs("r1") == seqs(5) and rt.counters.received == 4


def test_checkpoint_holds_back_for_a_failing_run(tmp_path):
    store = MemoryStore()
    sink = InMemorySink()
    sink.fail("bad", 1, times=FOREVER)
    config = fast_config(retry_initial_ms=60_000, retry_max_ms=60_000)
    for e in run_events("bad", 2) + run_events("ok", 2):
        store.append(e)
    with RuntimeThread(SinkRuntime(sink, store, state_dir=tmp_path, config=config)):
        wait_until(lambda: len(sink.events["ok"]) == 4)
    ckpt = json.loads((tmp_path / "checkpoint.json").read_text())
    assert ckpt["offset"] == 1  # bad#1 at offset 1 is not applied yet
    assert ckpt["runs"] == {"bad": 1, "ok": 4}
    sink._faults.clear()  # the backend recovers
    rt = SinkRuntime(sink, store, state_dir=tmp_path, config=fast_config())
    with RuntimeThread(rt):
        wait_until(lambda: len(sink.events["bad"]) == 4)
    assert sink.seqs("bad") == seqs(4) and sink.seqs("ok") == seqs(4)
    assert rt.counters.duplicates == 4  # ok#0..3 re-read, not re-applied


def test_replaced_store_is_noticed(tmp_path):
    sink = InMemorySink()
    old = MemoryStore(store_id="one")
    for e in run_events("r1", 3):
        old.append(e)
    with RuntimeThread(SinkRuntime(sink, old, state_dir=tmp_path, config=fast_config())):
        wait_until(lambda: len(sink.events["r1"]) == 5)
    new = MemoryStore(store_id="two")
    new.append(run_events("r2", 1)[0])  # offset 0 in the new store
    for e in run_events("r1", 3):
        new.append(e)
    rt = SinkRuntime(sink, new, state_dir=tmp_path, config=fast_config())
    with RuntimeThread(rt):
        wait_until(lambda: rt.counters.received == 6)
        wait_until(lambda: len(sink.events["r2"]) == 1)
    assert rt.counters.store_changes == 1 and sink.seqs("r1") == seqs(5)


def test_overflow_is_refetched_from_the_store():
    store = MemoryStore()
    sink = InMemorySink()
    sink.fail("r1", 1, times=2, how="retry")
    config = fast_config(max_pending_per_run=3, retry_initial_ms=30)
    rt = SinkRuntime(sink, store, config=config)
    events = run_events("r1", 20)
    for e in events:
        store.append(e)
    with RuntimeThread(rt):
        wait_until(lambda: len(sink.events["r1"]) == len(events))
    assert sink.events["r1"] == events
    assert rt.counters.overflow > 0 and rt.counters.filled > 0 and rt.counters.gaps == 0


def test_idempotent_backend_decides_where_a_run_resumes():
    sink = InMemorySink(idempotent=True)
    events = run_events("r1", 4)
    SinkRuntime(sink, ListSource(events[:3])).run()
    counters = SinkRuntime(sink, ListSource(events)).run()
    assert sink.events["r1"] == events and counters.duplicates == 3


def test_batches_are_bounded_and_stop_is_prompt(tmp_path):
    store = MemoryStore()
    sink = InMemorySink()
    for e in run_events("big", 2000):
        store.append(e)
    rt = SinkRuntime(sink, store, state_dir=tmp_path, config=fast_config(max_batch=100))
    with RuntimeThread(rt):
        wait_until(lambda: len(sink.events["big"]) == 2002)
    assert max(n for _, n in sink.batches) <= 100
    status = read_status(tmp_path)
    assert status["phase"] == "stopped" and status["counters"]["applied"] == 2002
    assert status["runs"][0]["run"] == "big" and status["runs"][0]["done"]


def test_state_dir_is_exclusive(tmp_path):
    first = StateDir(tmp_path)
    first.acquire()
    try:
        with pytest.raises(StateDirBusy, match="in use"):
            SinkRuntime(InMemorySink(), ListSource([]), state_dir=tmp_path).run()
    finally:
        first.release()


def test_output_lock_names_its_holder_and_is_free_again_after_release(tmp_path):
    import os

    from sinks.state import OutputBusy, OutputLock

    first = OutputLock(tmp_path / "out.lock", "written by pid {pid}")
    first.acquire()
    second = OutputLock(tmp_path / "out.lock", "written by pid {pid}")
    with pytest.raises(OutputBusy, match=f"written by pid {os.getpid()}$"):
        second.acquire()
    first.release()
    second.acquire()  # the holder let go: taken at once
    second.release()


def test_backend_that_cannot_open_is_retried():
    class Flaky(Sink):
        name = "flaky"

        def __init__(self) -> None:
            self.tries = 0
            self.got: list[int] = []

        def open_run(self, run: str) -> RunSink:
            self.tries += 1
            if self.tries < 3:
                raise OSError("disk not mounted yet")
            outer = self

            class R(RunSink):
                def apply(self, events, lines=None):
                    outer.got.extend(e["seq"] for e in events)
                    return ApplyResult.ok(len(events))

            return R()

    sink = Flaky()
    SinkRuntime(sink, ListSource(run_events("r1", 2)), config=fast_config()).run()
    assert sink.got == seqs(4) and sink.tries == 3


def test_config_validation():
    with pytest.raises(ValueError):
        RuntimeConfig(max_attempts=0)
    with pytest.raises(ValueError):
        RuntimeConfig(max_batch=0)


def test_retry_backoff_doubles_up_to_its_cap_and_a_backend_hint_only_lengthens_it():
    cfg = RuntimeConfig(retry_initial_ms=100, retry_max_ms=1000, max_attempts=3)
    assert [cfg.retry_delay_s(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert cfg.retry_delay_s(1, retry_after_s=0.5) == 0.5
    assert cfg.retry_delay_s(3, retry_after_s=0.1) == 0.4
    assert cfg.retry_delay_s(1, retry_after_s=60.0) == 1.0  # never past the cap
    assert [cfg.gives_up(n) for n in (1, 2, 3)] == [False, False, True]
    assert not RuntimeConfig().gives_up(10**6)  # no max_attempts: retried forever


def test_item_rejects_a_payload_that_disagrees_with_its_header():
    from rose.events import EventError

    item = StoredEvent(0, "other", 0, payload=encode(run_events("r1", 0)[0]))
    with pytest.raises(EventError, match="does not match"):
        item.load()
