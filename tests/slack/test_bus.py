"""`rose sink slack` as a real process on a real bus, posting to a local fake Slack."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from bus import BusTracker
from rose.al import SequentialActiveLearner
from rose.integrations.file_tracker import FileTracker
from rose.integrations.slack_messages import RunMessages, SlackOptions
from sinks.state import read_status
from tests.polling import wait_until
from tests.sinks.helpers import Publisher, run_events
from tests.slack.conftest import SECRET
from tests.test_seed_samples import register_seed_pipeline

BOUND_S = 60.0


def no_secret_under(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"webhook secret found in {f}"


def expected_texts(events, options) -> list[str]:
    fmt = RunMessages(events[0]["run"], options)
    return [t for e in events for t in fmt.messages(e)]


async def test_sink_posts_each_message_once_and_keeps_the_secret(
    engine, tmp_path, slack, broker, sink_process
):
    state = tmp_path / "state"
    args = ("slack", "--bus", str(broker.bus_file), "--notify-start", "--milestones", "0.2",
            "--min-interval", "0", "--state", str(state))  # fmt: skip
    env = {"ROSE_SLACK_WEBHOOK": slack.url}
    sink = sink_process(*args, name="slack", env=env)
    cmdline = Path(f"/proc/{sink.pid}/cmdline").read_bytes()
    assert SECRET.encode() not in cmdline and b"hooks" not in cmdline

    learner = SequentialActiveLearner(engine)
    register_seed_pipeline(learner)
    bus_tracker = BusTracker(bus=broker.bus_file)
    learner.add_tracker(FileTracker(tmp_path / "logs"))
    learner.add_tracker(bus_tracker)
    try:
        async for _ in learner.start(max_iter=20):
            pass
    finally:
        bus_tracker.close()
    run = learner.run_id
    want = [
        f"ROSE run {run} started — SequentialActiveLearner, stops when mean_squared_error_mse < 0.01",
        f"ROSE run {run} mean_squared_error_mse = 0.1000 passed milestone 0.2 at iteration 1",
        f"ROSE run {run} finished — 4 iterations, reason: criterion_met, final metric: 0.0090",
    ]
    wait_until(lambda: len(slack.texts()) >= 3, timeout=BOUND_S, what="three messages")
    assert sink.terminate() == 0
    assert slack.texts() == want

    # Restarted, it catches up from the store and posts nothing again.
    again = sink_process(*args, name="again", env=env)
    wait_until(
        lambda: (
            (read_status(state) or {}).get("pid") == again.pid
            and read_status(state).get("phase") == "running"
        ),
        timeout=BOUND_S,
        what="the restarted sink running",
    )
    assert again.terminate() == 0
    assert slack.texts() == want and slack.attempts == 3
    output = sink.output() + again.output()
    assert "Traceback" not in output and SECRET not in output
    for where in (state, tmp_path / "logs", broker.bus_file.parent):
        no_secret_under(where)


def test_missing_webhook_is_a_one_line_error(tmp_path, broker, sink_process):
    env = {"ROSE_SLACK_WEBHOOK": ""}
    sink = sink_process("slack", "--bus", str(broker.bus_file), name="nohook", env=env)
    assert sink.proc.wait(30) != 0
    out = sink.output()
    assert "ROSE_SLACK_WEBHOOK" in out and "Traceback" not in out


def test_429_then_kill_9_and_restart_never_posts_twice(tmp_path, broker, sink_process, slack):
    """Every message once; the only one that may be missing is one a kill caught mid-POST,
    which the restarted sink reports instead of risking a second copy."""
    options = SlackOptions(notify_start=True, milestones=(0.3, 0.15))
    runs = {r: run_events(r, 40) for r in ("s1", "s2")}
    slack.script((429, {"Retry-After": "1"}, "rate_limited"), (503, {}, "busy"))
    state = tmp_path / "state"
    args = (
        "slack",
        "--bus",
        str(broker.bus_file),
        "--notify-start",
        "--milestones",
        "0.3,0.15",
        "--min-interval",
        "0",
        "--state",
        str(state),
        "--retry-max",
        "1",
    )
    env = {"ROSE_SLACK_WEBHOOK": slack.url}
    first = sink_process(*args, name="first", env=env)
    publisher = Publisher(broker.bus_file, runs, pace_every=3)
    wait_until(lambda: len(slack.texts()) >= 3, timeout=BOUND_S, what="first messages")
    first.signal(signal.SIGKILL)
    first.proc.wait(10)
    second = sink_process(*args, name="second", env=env)
    publisher.join(BOUND_S)
    journals = [state / "slack-runs" / f"{r}.json" for r in runs]
    wait_until(
        lambda: all(j.exists() and json.loads(j.read_text())["next_seq"] == 42 for j in journals),
        timeout=BOUND_S,
        what="every event applied",
    )
    assert second.terminate() == 0
    want = [t for events in runs.values() for t in expected_texts(events, options)]
    assert len(want) == 8
    got = slack.texts()
    assert len(got) == len(set(got)), "a message was posted twice"
    assert set(got) <= set(want)
    reported = second.output().count("may or may not have reached Slack")
    assert len(want) - len(got) <= reported <= 1
    assert slack.attempts >= len(got) + 2  # the 429 and the 503 were retried
