"""The Slack sink under the sink runtime: once per message, retries, restarts, secrecy."""

from __future__ import annotations

import json
import logging

from rose.al import ParallelActiveLearner, SequentialActiveLearner
from rose.eventlog import read_events
from rose.integrations.file_tracker import FileTracker
from rose.integrations.slack_messages import SlackOptions
from rose.integrations.slack_tracker import SlackTracker
from rose.integrations.slack_webhook import Webhook
from sinks.runtime import RuntimeConfig, SinkRuntime
from sinks.slack_sink import SlackSink
from sinks.sources import ListSource, LogSource
from tests.slack.conftest import SECRET
from tests.test_seed_samples import register_seed_pipeline

FAST = RuntimeConfig(retry_initial_ms=5, retry_max_ms=20, max_attempts=10)
OPTIONS = SlackOptions(notify_start=True, milestones=(0.2,), learner_names=("A", "B"))


def sink(slack, tmp_path, options=OPTIONS) -> SlackSink:
    return SlackSink(Webhook(slack.url, min_interval_s=0), tmp_path / "journal", options)


async def tracked_run(engine, tmp_path, slack, cls=SequentialActiveLearner, **start):
    """Run with FileTracker and SlackTracker; return the log and what the tracker posted."""
    learner = cls(engine)
    register_seed_pipeline(learner)
    files = FileTracker(tmp_path)
    learner.add_tracker(files)
    learner.add_tracker(
        SlackTracker(
            slack.url,
            notify_start=True,
            milestones=[0.2],
            learner_names=["A", "B"],
            min_interval_s=0,
        )
    )
    async for _ in learner.start(**start):
        pass
    posted = slack.texts()
    slack.received.clear()
    return files.path, posted


async def test_sink_posts_what_the_tracker_posts_once(engine, tmp_path, slack, caplog):
    caplog.set_level(logging.DEBUG)
    log_path, inproc = await tracked_run(engine, tmp_path, slack, max_iter=20)
    assert len(inproc) == 3
    SinkRuntime(sink(slack, tmp_path), LogSource([log_path]), config=FAST).run()
    assert slack.texts() == inproc
    # A second sink process (no runtime checkpoint) finds the journal: nothing twice.
    SinkRuntime(sink(slack, tmp_path), LogSource([log_path]), config=FAST).run()
    assert slack.texts() == inproc
    assert SECRET not in caplog.text


async def test_parallel_run_through_the_sink(engine, tmp_path, slack):
    log_path, inproc = await tracked_run(
        engine, tmp_path, slack, cls=ParallelActiveLearner, parallel_learners=2, max_iter=3
    )
    SinkRuntime(sink(slack, tmp_path), LogSource([log_path]), config=FAST).run()
    assert slack.texts() == inproc
    assert "\n• learner A: " in inproc[-1] and "\n• learner B: " in inproc[-1]


async def test_429_and_5xx_are_retried_by_the_runtime(engine, tmp_path, slack):
    log_path, inproc = await tracked_run(engine, tmp_path, slack, max_iter=20)
    slack.script(
        (429, {"Retry-After": "0"}, "rate_limited"),
        (500, {}, "oops"),
        (200, {}, "ok"),
        (503, {}, "busy"),
    )
    counters = SinkRuntime(sink(slack, tmp_path), LogSource([log_path]), config=FAST).run()
    assert slack.texts() == inproc
    assert slack.attempts == len(inproc) + 3
    assert counters.retries == 3 and counters.failed == 0


async def test_a_rejected_message_is_skipped_and_reported(engine, tmp_path, slack, caplog):
    log_path, inproc = await tracked_run(engine, tmp_path, slack, max_iter=20)
    slack.script((400, {}, "invalid_payload"))
    counters = SinkRuntime(sink(slack, tmp_path), LogSource([log_path]), config=FAST).run()
    assert slack.texts() == inproc[1:]  # the start message was refused, the rest went out
    assert counters.failed == 1 and slack.attempts == len(inproc)
    assert "HTTP 400" in caplog.text and SECRET not in caplog.text
    SinkRuntime(sink(slack, tmp_path), LogSource([log_path]), config=FAST).run()
    assert slack.attempts == len(inproc), "a refused message is not retried by a restart"


async def test_a_message_in_flight_at_a_crash_is_not_sent_again(engine, tmp_path, slack, caplog):
    log_path, inproc = await tracked_run(engine, tmp_path, slack, max_iter=20)
    events = list(read_events(log_path))
    run = events[0]["run"]
    milestone_seq = next(
        e["seq"] for e in events if e["kind"] == "iteration" and e["body"]["metric_value"] <= 0.2
    )
    SinkRuntime(sink(slack, tmp_path), ListSource(events[:milestone_seq]), config=FAST).run()
    assert slack.texts() == inproc[:1]
    # As if the process died after POSTing the milestone but before recording it.
    path = tmp_path / "journal" / f"{run}.json"
    journal = json.loads(path.read_text())
    assert journal["next_seq"] == milestone_seq
    journal["inflight"] = [milestone_seq, 0]
    path.write_text(json.dumps(journal))
    SinkRuntime(sink(slack, tmp_path), ListSource(events), config=FAST).run()
    assert slack.texts() == [inproc[0], inproc[2]]
    assert "may or may not have reached Slack" in caplog.text
