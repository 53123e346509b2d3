"""Fuzzing each sink through the sink runtime, as bytes come from the broker.

A source hands the runtime what a broker may hold: valid runs whose states
are as strange as plain data gets (hostile keys, NaN/inf, long strings, deep
nesting, marker look-alikes), interleaved with garbage payloads, payloads
that disagree with their header, damaged encodings, events with a wrong type
in a field, hostile run ids and duplicates.  For every sink kind the runtime
must finish (no event retried forever), count what it refused, log invalid
input a bounded number of times, and the sink must hold only valid events,
each once, in order.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.wire import StoredEvent
from rose.eventlog import read_events
from rose.events import EventError, decode, encode
from rose.tracking import TrackerBase
from sinks.runtime import MAX_INVALID_LOGGED, RuntimeConfig, SinkRuntime
from sinks.sources import BoundedSource

from .conftest import tried
from .strategies import HOSTILE_RUN_IDS, damaged_bytes, mutated_events, run_ids, valid_events

BOUND_S = 10.0


class RawSource(BoundedSource):
    """A bounded source of (run, seq, payload) exactly as a broker would store them."""

    def __init__(self, items: list[tuple[str, int, bytes]]) -> None:
        self.items = items

    def subscribe(self, from_offset: int = 0) -> Iterator[StoredEvent | None]:
        for i, (run, seq, payload) in enumerate(self.items[from_offset:], start=from_offset):
            yield StoredEvent(i, run, seq, payload=payload)


@st.composite
def broker_contents(draw) -> list[tuple[str, int, bytes]]:
    """A few well-formed runs with hostile content, and noise in between."""
    items: list[tuple[str, int, bytes]] = []
    for run in draw(st.lists(run_ids, min_size=1, max_size=3, unique=True)):
        n = draw(st.integers(0, 6))
        kinds = ["start"] + ["iteration"] * n + ["stop"]
        events = [draw(valid_events(run, kind, seq)) for seq, kind in enumerate(kinds)]
        items += [(e["run"], e["seq"], encode(e)) for e in events]
    noise = st.one_of(
        st.tuples(run_ids, st.integers(0, 9), st.binary(max_size=200)),
        st.tuples(run_ids, st.integers(0, 9), mutated_events()),
        st.tuples(run_ids, st.integers(0, 9), damaged_bytes()),
        st.tuples(st.sampled_from(HOSTILE_RUN_IDS), st.integers(0, 9), st.binary(max_size=50)),
        st.builds(lambda e: (e["run"], e["seq"] + 1, encode(e)), valid_events()),  # mismatch
    )
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(items)))
        items.insert(pos, draw(noise))
    if items and draw(st.booleans()):
        items.append(draw(st.sampled_from(items)))  # a duplicate
    return items


def _valid(item: tuple[str, int, bytes]) -> dict | None:
    run, seq, payload = item
    try:
        event = decode(payload)
    except EventError:
        return None
    return event if (event["run"], event["seq"]) == (run, seq) else None


def drive(
    sink: Any, items: list[tuple[str, int, bytes]], caplog: Any, bound_s: float = BOUND_S
) -> SinkRuntime:
    """Run the runtime to the end of the items, bounded; fail if any run is stuck retrying."""
    config = RuntimeConfig(
        retry_initial_ms=1.0, retry_max_ms=5.0, gap_grace_ms=10.0, max_attempts=None
    )
    runtime = SinkRuntime(sink, RawSource(items), config=config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runtime.run()
        except BaseException as exc:
            errors.append(exc)

    caplog.clear()
    t = threading.Thread(target=run, name="fuzz-runtime", daemon=True)
    t.start()
    t.join(bound_s)
    if t.is_alive():
        stuck = [(r["run"], r["next_seq"], r["last_error"]) for r in runtime.status()["runs"]]
        runtime.stop()
        t.join(BOUND_S)
        pytest.fail(f"runtime did not finish: runs retrying forever {stuck}")
    assert not errors, errors
    c = runtime.counters
    assert c.received == len(items)
    invalid_logs = [r for r in caplog.records if "invalid" in r.getMessage()]
    assert len(invalid_logs) <= MAX_INVALID_LOGGED + 1
    return runtime


def _expected(items: list[tuple[str, int, bytes]]) -> dict[str, list[int]]:
    """Seqs each run should end with: its valid events, first copy of each seq."""
    out: dict[str, list[int]] = {}
    for item in items:
        event = _valid(item)
        if event is not None and event["seq"] not in out.setdefault(event["run"], []):
            out[event["run"]].append(event["seq"])
    return {run: sorted(seqs) for run, seqs in out.items()}


_counter = itertools.count()


def _scratch(root: Path) -> Path:
    d = root / f"ex{next(_counter)}"
    d.mkdir()
    return d


def fuzz(n: int) -> settings:
    return settings(
        max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )


def test_file_sink(tmp_path, caplog):
    from sinks.file_sink import FileSink

    @fuzz(100)
    @given(broker_contents())
    def check(items):
        tried("sink file: broker contents")
        out = _scratch(tmp_path)
        runtime = drive(FileSink(out), items, caplog)
        want = _expected(items)
        for run, seqs in want.items():
            logged = [e["seq"] for e in read_events(out / f"{run}.jsonl", strict=True)]
            assert logged == sorted(set(logged))  # each once, in order
            assert set(logged) <= set(seqs)
        assert {p.stem for p in out.glob("*.jsonl")} <= set(want)
        assert runtime.counters.applied + runtime.counters.failed <= sum(map(len, want.values()))

    check()


class _Recording(TrackerBase):
    seen: list[tuple[str, Any]] = []

    def on_start(self, manifest) -> None:
        self.seen.append(("start", manifest.learner_type))

    def on_iteration(self, state) -> None:
        self.seen.append(("iteration", state.iteration))

    def on_stop(self, final_state, reason) -> None:
        self.seen.append(("stop", reason))


def test_tracker_sink(tmp_path, caplog):
    from sinks.tracker_sink import TrackerSink

    @fuzz(100)
    @given(broker_contents())
    def check(items):
        tried("sink tracker: broker contents")
        _Recording.seen = []
        runtime = drive(TrackerSink(_Recording), items, caplog)
        assert len(_Recording.seen) == runtime.counters.applied

    check()


def _cli_sink(kind: str, *argv: str) -> Any:
    from cli.kinds import build_checked, kind_options
    from cli.main import build_parser
    from sinks.registry import load_kind

    args = build_parser().parse_args(["sink", kind, *argv])
    sink_kind = load_kind(kind)
    assert sink_kind is not None
    return build_checked(sink_kind, kind_options(args, sink_kind), args.state)


def test_mlflow_sink(tmp_path, caplog, monkeypatch):
    pytest.importorskip("mlflow")
    from tests.mlflow.helpers import mlflow_content

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    @fuzz(50)
    @given(broker_contents())
    def check(items):
        tried("sink mlflow: broker contents")
        experiment = _scratch(tmp_path).name  # one store, one experiment per example
        sink = _cli_sink("mlflow", "--tracking-uri", uri, "--experiment", experiment)
        runtime = drive(sink, items, caplog)
        want = _expected(items)
        if runtime.counters.applied:
            content = mlflow_content(uri, experiment)
            assert set(content) <= set(want)
            for run, c in content.items():
                for key, history in c["metrics"].items():
                    steps = [h[0] for h in history]
                    assert len(steps) == len(set(steps)), f"{run}: {key} logged twice"

    check()


@pytest.fixture
def slack():
    from tests.slack.conftest import serving

    with serving("T0/B0/fuzz") as fake:
        yield fake


def test_slack_sink(tmp_path, caplog, monkeypatch, slack):
    monkeypatch.setenv("ROSE_SLACK_WEBHOOK", slack.url)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)

    @fuzz(20)
    @given(broker_contents())
    def check(items):
        tried("sink slack: broker contents")
        before = slack.attempts
        state = _scratch(tmp_path)
        sink = _cli_sink(
            "slack", "--state", str(state), "--notify-start", "--milestones", "0.5,0.1",
            "--min-interval", "0",
        )  # fmt: skip
        drive(sink, items, caplog)
        texts = slack.texts()[before:]
        assert all(isinstance(t, str) and len(t) < 40_000 for t in texts)

    check()


def test_slack_sink_non_finite_metric_value(tmp_path, caplog, monkeypatch, slack):
    """Found by test_slack_sink: a NaN/inf metric once made the run's journal unwritable."""
    from rose.events import EventContext, iteration_event, start_event, stop_event
    from rose.tracking import IterationState

    from .strategies import MANIFEST

    monkeypatch.setenv("ROSE_SLACK_WEBHOOK", slack.url)
    state = IterationState(iteration=0, metric_name="mse", metric_value=math.inf)
    events = [
        start_event(EventContext("r", 0, 1.0, {}), MANIFEST),
        iteration_event(EventContext("r", 1, 2.0), state),
        stop_event(EventContext("r", 2, 3.0), None, "stopped"),
    ]
    sink = _cli_sink("slack", "--state", str(tmp_path), "--min-interval", "0")
    drive(sink, [(e["run"], e["seq"], encode(e)) for e in events], caplog, bound_s=3.0)


def test_clearml_sink(tmp_path, caplog, monkeypatch):
    """Few examples: every run is a ClearML worker process (offline mode)."""
    pytest.importorskip("clearml")
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml-cache"))
    for key in ("CLEARML_PROC_MASTER_ID", "CLEARML_TASK_ID"):
        monkeypatch.delenv(key, raising=False)

    @fuzz(6)
    @given(broker_contents())
    def check(items):
        tried("sink clearml: broker contents")
        state = _scratch(tmp_path)
        sink = _cli_sink("clearml", "--project", "fuzz", "--state", str(state))
        runtime = drive(sink, items, caplog, bound_s=60.0)
        assert runtime.counters.applied <= sum(map(len, _expected(items).values()))

    check()
