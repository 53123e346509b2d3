"""Posting to a real local HTTP server: classification, Retry-After, rate limit, secrecy."""

from __future__ import annotations

import logging
import os

import pytest

from rose.integrations.slack_webhook import (
    Delivery,
    Webhook,
    _retry_after,
    deliver,
    load_webhook_url,
)
from tests.slack.conftest import SECRET


class FakeTime:
    """A clock and a sleep that only move when slept: no real waiting, no wall clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_ok_and_payload(slack):
    hook = Webhook(slack.url, min_interval_s=0)
    assert hook.post({"text": "hi"}).delivery is Delivery.OK
    assert slack.received[0]["json"] == {"text": "hi"}
    assert slack.received[0]["content_type"] == "application/json"


def test_429_retry_after_is_honoured_and_paced(slack):
    t = FakeTime()
    hook = Webhook(slack.url, min_interval_s=1.0, clock=t.clock, sleep=t.sleep)
    slack.script((429, {"Retry-After": "7"}, "rate_limited"))
    result = deliver(hook, {"text": "x"}, max_attempts=3, backoff_s=0.5, sleep=t.sleep)
    assert result.delivery is Delivery.OK
    assert slack.attempts == 2 and slack.texts() == ["x"]
    assert t.slept and max(t.slept) >= 7.0  # waited out Retry-After, not the 0.5 s backoff


def test_5xx_backs_off_and_is_bounded(slack):
    t = FakeTime()
    hook = Webhook(slack.url, min_interval_s=0, clock=t.clock, sleep=t.sleep)
    slack.script(*[(503, {}, "busy")] * 10)
    result = deliver(hook, {"text": "x"}, max_attempts=4, backoff_s=1.0, sleep=t.sleep)
    assert result.delivery is Delivery.RETRY and result.status == 503
    assert slack.attempts == 4
    assert t.slept == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("code", [400, 403, 404, 410])
def test_other_4xx_is_rejected_once_with_a_clear_message(slack, code):
    hook = Webhook(slack.url, min_interval_s=0)
    slack.script((code, {}, "no_service"))
    result = deliver(hook, {"text": "x"}, max_attempts=5, sleep=lambda s: None)
    assert result.delivery is Delivery.REJECTED and slack.attempts == 1
    assert f"HTTP {code}" in result.error and SECRET not in result.error


def test_unreachable_is_a_retry_and_never_shows_the_url():
    hook = Webhook(f"http://127.0.0.1:9/services/{SECRET}", min_interval_s=0, timeout_s=2)
    result = hook.post({"text": "x"})
    assert result.delivery is Delivery.RETRY
    assert SECRET not in result.error and SECRET not in repr(hook)


def test_retry_after_forms():
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("100000") == 300.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_secret_from_env_or_private_file(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"https://hooks.slack.com/services/{SECRET}"
    monkeypatch.setenv("MY_HOOK", url)
    assert load_webhook_url(env_var="MY_HOOK") == url
    monkeypatch.delenv("MY_HOOK")
    with pytest.raises(ValueError, match="set MY_HOOK"):
        load_webhook_url(env_var="MY_HOOK")
    path = tmp_path / "hook"
    path.write_text(url + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600") as err:
        load_webhook_url(file=path)
    assert SECRET not in str(err.value)
    os.chmod(path, 0o600)
    assert load_webhook_url(file=path) == url
    path.write_text("not a url")
    with pytest.raises(ValueError, match="http") as err:
        load_webhook_url(file=path)
    assert SECRET not in caplog.text


def test_posts_are_paced_to_slacks_rate_limit(slack):
    t = FakeTime()
    hook = Webhook(slack.url, min_interval_s=1.0, clock=t.clock, sleep=t.sleep)
    for i in range(3):
        assert hook.post({"text": str(i)}).delivery is Delivery.OK
    assert t.slept == [1.0, 1.0]  # the first goes at once, then one per second
    assert slack.texts() == ["0", "1", "2"]
