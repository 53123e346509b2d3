"""A full disk under the broker's store and under the file sink's output.

The disk is emulated without privileges: the daemon runs with a small
RLIMIT_FSIZE (and SIGXFSZ ignored), so its writes past the limit fail with
EFBIG exactly where a full disk fails them with ENOSPC; raising the limit from
outside (prlimit) is the space coming back.  Each daemon must say so clearly,
once, keep what it has, keep serving, and recover by itself; afterwards the
sinks hold every event exactly once.
"""

from __future__ import annotations

import resource

import pytest

from bus import BusClient
from bus.store import EventStore
from sinks.state import read_status

from .conftest import limit_file_size, raise_file_size_limit, wait_until

pytestmark = pytest.mark.skipif(
    not hasattr(resource, "prlimit"), reason="needs resource.prlimit (Linux) to emulate a full disk"
)

#: Small enough that each run outgrows it a third of the way through.
STORE_LIMIT = 40_000
FILE_LIMIT = 24_000


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.timeout(240)
def test_broker_store_on_a_full_disk(stack):
    stack.broker.preexec = limit_file_size(STORE_LIMIT)
    stack.start()
    alpha = stack.learner("alpha", 120, pace_ms=10)
    stack.learner("beta", 100, pace_ms=10)
    with BusClient.from_file(stack.bus_file, timeout_ms=5000) as client:
        stats = wait_until(
            lambda: (s := client.stats())["store_error"] and s, "the store to fill up"
        )
        assert "File too large" in stats["store_error"] and stats["held"] > 0
        stored = stats["events"]
        # The learners carry on (their BusTrackers queue) and the broker keeps answering.
        ref = stack.ref
        wait_until(
            lambda: sum(_lines(p) for p in ref.glob("*.jsonl")) > stored + 50,
            "the learners to go on while the store is full",
        )
        assert client.stats()["events"] == stored  # nothing half-written became visible
        assert stack.broker.alive
        raise_file_size_limit(stack.broker.pid)  # space comes back
        wait_until(lambda: not client.stats()["store_error"], "the broker to recover")
    stack.wait_delivered()
    assert alpha.result()["dropped"] == 0
    stack.stop_all()
    log = stack.broker.log()
    assert log.count("cannot write to the store") == 1, log
    assert "File too large" in log and log.count("is writable again") == 1
    stack.broker.events.append(f"store full at {stored} events, then space back")
    report = stack.check_exactly_once("full disk under the broker's store (RLIMIT_FSIZE)")
    store = EventStore(stack.store)  # whole records only: no torn tail to cut
    try:
        assert store.next_offset == report["events"]
    finally:
        store.close()
    assert "torn" not in log


@pytest.mark.timeout(240)
def test_file_sink_on_a_full_disk(stack):
    stack.file_sink.preexec = limit_file_size(FILE_LIMIT)
    stack.start()
    stack.learner("alpha", 120, pace_ms=10)
    stack.learner("beta", 100, pace_ms=10)

    def stuck() -> list[dict]:
        status = read_status(stack.file_state) or {}
        return [r for r in status.get("runs", []) if "File too large" in r.get("last_error", "")]

    wait_until(lambda: len(stuck()) == 2, "both runs' files to fill up")
    # What is on disk is whole lines, a prefix of the reference: nothing torn.
    for run, data in stack.reference().items():
        got = (stack.out / f"{run}.jsonl").read_bytes()
        assert got.endswith(b"\n") and data.startswith(got) and len(got) <= FILE_LIMIT
    # The MLflow sink is another process: it goes on regardless.
    wait_until(stack.mlflow_complete, "the MLflow sink to finish while the file sink waits")
    assert len(stuck()) == 2 and stack.file_sink.alive
    raise_file_size_limit(stack.file_sink.pid)
    stack.wait_delivered()
    stack.stop_all()
    log = stack.file_sink.log()
    for run in stack.reference():
        failures = [ln for ln in log.splitlines() if f"run {run} failed at seq" in ln]
        assert len(failures) == 1 and "File too large" in failures[0], failures
        assert f"run {run} recovered after" in log
    stack.file_sink.events.append("output full mid-run, then space back")
    stack.check_exactly_once("full disk under the file sink's output (RLIMIT_FSIZE)")
