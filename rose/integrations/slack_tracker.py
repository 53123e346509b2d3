"""SlackTracker: a Slack message when a run ends (and, if asked, at its start and milestones).

    learner.add_tracker(SlackTracker())                  # URL from $ROSE_SLACK_WEBHOOK
    learner.add_tracker(SlackTracker(webhook_file="~/.config/rose/slack-webhook"))  # 0600

A message when the run stops (iterations, reason, final metric; one line per
learner for parallel runs), and optionally when it starts and when a metric
passes given milestones.  Messages come from
:mod:`rose.integrations.slack_messages`, the formatting the Slack sink uses.

Posting never runs on the learner's thread: a daemon thread sends messages in
order, paced to Slack's rate limit, retrying 429 (after its Retry-After) and
5xx a bounded number of times.  ``on_stop`` waits for the queue to drain for at
most ``flush_timeout_s``, so the final message leaves before the script exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Sequence
from typing import Any

from rose.events.feed import EventTracker
from rose.integrations.slack_messages import RunMessages, SlackOptions
from rose.integrations.slack_webhook import (
    DEFAULT_MIN_INTERVAL_S,
    DEFAULT_WEBHOOK_ENV,
    Delivery,
    Webhook,
    check_webhook_url,
    deliver,
    load_webhook_url,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_FLUSH_TIMEOUT_S = 30.0
#: Messages waiting to be sent beyond this are dropped (counted): memory stays bounded.
MAX_QUEUED = 1000


class SlackTracker(EventTracker):
    """Post a run's milestones and its end to a Slack incoming webhook.

    ``webhook_url`` is accepted for the classic ``SlackTracker(url)`` call; prefer the
    environment variable ``webhook_env`` or a 0600 ``webhook_file``, which keep
    the secret out of source code.
    """

    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        webhook_env: str = DEFAULT_WEBHOOK_ENV,
        webhook_file: str | os.PathLike[str] | None = None,
        notify_start: bool = False,
        milestones: Sequence[float] = (),
        learner_names: Sequence[str] | None = None,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_backoff_s: float = 1.0,
        flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S,
    ) -> None:
        super().__init__()
        if webhook_url is not None:
            check_webhook_url(webhook_url)
            url = webhook_url
        else:
            url = load_webhook_url(env_var=webhook_env, file=webhook_file)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._webhook = Webhook(url, min_interval_s=min_interval_s)
        self.options = SlackOptions(
            notify_start=notify_start,
            milestones=tuple(float(m) for m in milestones),
            learner_names=tuple(learner_names) if learner_names else None,
        )
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.flush_timeout_s = flush_timeout_s
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._messages: RunMessages | None = None
        self._queue: queue.Queue[str | None] = queue.Queue(MAX_QUEUED)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SlackTracker(webhook=<redacted>, sent={self.sent}, failed={self.failed})"

    def emit(self, event: dict[str, Any]) -> None:
        if self._messages is None or event["kind"] == "start" or self._messages.run != event["run"]:
            self._messages = RunMessages(event["run"], self.options)
        for text in self._messages.messages(event):
            self._enqueue(text)
        if event["kind"] == "stop":
            self.flush(self.flush_timeout_s)

    def _enqueue(self, text: str) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._send_loop, name="rose-slack", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(text)
        except queue.Full:
            self.dropped += 1
            log.warning("slack: %d message(s) dropped: the queue is full", self.dropped)

    def _send_loop(self) -> None:
        while True:
            text = self._queue.get()
            try:
                if text is None or self._closing.is_set():
                    return
                result = deliver(
                    self._webhook,
                    {"text": text},
                    max_attempts=self.max_attempts,
                    stop=self._closing,
                )
                if result.delivery is Delivery.OK:
                    self.sent += 1
                else:
                    self.failed += 1
                    log.error("slack: message not posted: %s", result.error)
            except Exception:  # the sender must outlive any surprise
                self.failed += 1
                log.exception("slack: sending failed")
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait (bounded) until every queued message was sent or given up on."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, name="rose-slack-flush", daemon=True).start()
        ok = done.wait(self.flush_timeout_s if timeout_s is None else timeout_s)
        if not ok:
            log.warning(
                "slack: %d message(s) still queued after the flush timeout", self._queue.qsize()
            )
        return ok

    def close(self) -> None:
        """Stop the sender; messages not yet sent are dropped."""
        self._closing.set()
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            self._thread.join(timeout=5)
