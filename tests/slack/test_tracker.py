"""SlackTracker on a real learner, posting to a real local HTTP server."""

from __future__ import annotations

import logging

import pytest

from rose.al import ParallelActiveLearner, SequentialActiveLearner
from rose.integrations.file_tracker import FileTracker
from rose.integrations.slack_tracker import SlackTracker
from tests.slack.conftest import SECRET
from tests.test_seed_samples import register_seed_pipeline


async def test_the_seeds_message_posted_once(engine, slack, caplog):
    caplog.set_level(logging.DEBUG)
    learner = SequentialActiveLearner(engine)
    register_seed_pipeline(learner)
    learner.add_tracker(SlackTracker(slack.url, min_interval_s=0))
    async for _ in learner.start(max_iter=20):
        pass
    assert slack.texts() == [
        f"ROSE run {learner.run_id} finished — 4 iterations, reason: criterion_met, "
        "final metric: 0.0090"
    ]
    assert slack.received[0]["path"].endswith(SECRET)
    assert SECRET not in caplog.text


async def test_url_from_the_environment_start_and_milestones(engine, slack, monkeypatch):
    monkeypatch.setenv("ROSE_SLACK_WEBHOOK", slack.url)
    learner = SequentialActiveLearner(engine)
    register_seed_pipeline(learner)
    tracker = SlackTracker(notify_start=True, milestones=[0.2], min_interval_s=0)
    assert SECRET not in repr(tracker)
    learner.add_tracker(tracker)
    async for _ in learner.start(max_iter=20):
        pass
    run = learner.run_id
    assert slack.texts() == [
        f"ROSE run {run} started — SequentialActiveLearner, stops when mean_squared_error_mse < 0.01",
        f"ROSE run {run} mean_squared_error_mse = 0.1000 passed milestone 0.2 at iteration 1",
        f"ROSE run {run} finished — 4 iterations, reason: criterion_met, final metric: 0.0090",
    ]


async def test_parallel_learners_and_a_429_then_a_500(engine, slack, tmp_path):
    slack.script((429, {"Retry-After": "0"}, "rate_limited"), (500, {}, "oops"))
    learner = ParallelActiveLearner(engine)
    register_seed_pipeline(learner, mse=(0.5,))
    file_tracker = FileTracker(tmp_path)
    learner.add_tracker(file_tracker)
    tracker = SlackTracker(
        slack.url, learner_names=["A", "B"], min_interval_s=0, retry_backoff_s=0.01
    )
    learner.add_tracker(tracker)
    async for _ in learner.start(parallel_learners=2, max_iter=3):
        pass
    assert slack.attempts == 3 and tracker.sent == 1
    assert slack.texts() == [
        f"ROSE run {learner.run_id} finished — reason: max_iter_reached\n"
        "• learner A: 3 iterations, final metric: 0.5000\n"
        "• learner B: 3 iterations, final metric: 0.5000"
    ]
    assert SECRET not in file_tracker.path.read_text(), "the webhook never enters events"


async def test_a_revoked_webhook_is_reported_not_retried(engine, slack, caplog):
    slack.script((404, {}, "no_service"))
    learner = SequentialActiveLearner(engine)
    register_seed_pipeline(learner)
    tracker = SlackTracker(slack.url, min_interval_s=0)
    learner.add_tracker(tracker)
    async for _ in learner.start(max_iter=20):
        pass
    assert slack.attempts == 1 and tracker.failed == 1
    assert "revoked" in caplog.text and SECRET not in caplog.text


def test_missing_webhook_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("ROSE_SLACK_WEBHOOK", raising=False)
    with pytest.raises(ValueError, match="ROSE_SLACK_WEBHOOK"):
        SlackTracker()
