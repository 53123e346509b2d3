"""Many concurrent publishers into one broker: zero loss, zero duplicates in the store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bus import BusClient
from cli.main import main as rose_main
from tests.polling import wait_until

from .conftest import REPO

TRACKERS = 64  # per process
EVENTS = 40  # per tracker: start, 38 iterations, stop


def run_publishers(processes: int, frontend: str, *args: object, timeout: float) -> list[dict]:
    """``processes`` publisher processes (tests.bus._publisher) at once; each one's report."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.bus._publisher", frontend, *map(str, args)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


@pytest.mark.parametrize(
    "processes", [4, pytest.param(16, marks=pytest.mark.slow, id="1024-publishers")]
)
def test_concurrent_publishers_lose_nothing(broker, processes):
    """256 (or, in the slow suite, 1024) publishers connected at once."""
    PROCESSES = processes  # noqa: N806
    reports = run_publishers(PROCESSES, broker.frontend, TRACKERS, EVENTS, timeout=120)
    runs = [r for rep in reports for r in rep["runs"]]
    assert len(set(runs)) == PROCESSES * TRACKERS
    assert sum(rep["dropped"] for rep in reports) == 0

    total = PROCESSES * TRACKERS * EVENTS
    with BusClient(broker.backend, broker.replay, timeout_ms=10_000) as client:
        assert wait_until(lambda: client.stats()["stored"] == total)
        stats = client.stats()
        assert stats["events"] == total and stats["rejected"] == 0
        assert stats["received"] == total + stats["duplicates"]
        summaries = {s["run"]: s for s in client.runs()}
        assert set(summaries) == set(runs)
        assert all(s["count"] == EVENTS and s["last_seq"] == EVENTS - 1 for s in summaries.values())
        for run in runs[:: TRACKERS // 4]:  # spot-check whole runs in seq order
            assert [e.seq for e in client.run_events(run)] == list(range(EVENTS))
        offsets = []
        while len(offsets) < total:
            offsets += [e.offset for e in client.fetch(len(offsets), limit=10_000)]
        assert offsets == list(range(total))


@pytest.mark.parametrize(
    ("processes", "trackers"),
    [(2, 25), pytest.param(10, 50, marks=pytest.mark.slow, id="500-publishers")],
)
def test_a_storm_of_default_publishers_is_stored_whole(broker, processes, trackers, _fallback_dir):
    """Publishers x 200 events, default settings, each finishing right after it connected.

    The slow variant is the 500 x 200 storm (16-30 s on 2 shared cores).

    close() waits for the broker's acknowledgements, so every event is stored;
    whatever was not acknowledged in time would be in the fallback log, and
    replaying it must then complete the store.
    """
    events = 200
    reports = run_publishers(processes, broker.frontend, trackers, events, "defaults", timeout=300)
    total = processes * trackers * events
    acked = sum(r["acknowledged"] for r in reports)
    fallback = sum(r["fallback"] for r in reports)
    assert sum(r["dropped"] for r in reports) == 0
    assert acked + fallback == total
    with BusClient(broker.backend, broker.replay, timeout_ms=10_000) as client:
        stored = client.stats()["stored"]
        print(f"\nstorm {processes * trackers} x {events}: stored {stored}/{total} "
              f"({100 * stored / total:.2f}%) at close, {fallback} in the fallback log")  # fmt: skip
        assert stored >= acked  # acknowledged means stored
        if fallback:
            logs = [str(p) for p in sorted(_fallback_dir.glob("*.jsonl"))]
            assert rose_main(["replay", *logs, "--publish", broker.frontend]) == 0
        assert client.stats()["stored"] == total
        assert all(s["count"] == events for s in client.runs())
