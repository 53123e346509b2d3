"""Many concurrent publishers into one broker: zero loss, zero duplicates in the store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bus import BusClient

from .conftest import REPO, wait_until

TRACKERS = 64  # per process
EVENTS = 40  # per tracker: start, 38 iterations, stop


@pytest.mark.parametrize(
    "processes", [4, pytest.param(16, marks=pytest.mark.slow, id="1024-publishers")]
)
def test_concurrent_publishers_lose_nothing(broker, processes):
    """256 (or, in the slow suite, 1024) publishers connected at once."""
    PROCESSES = processes  # noqa: N806
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bus._publisher",
                broker.frontend,
                str(TRACKERS),
                str(EVENTS),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
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
