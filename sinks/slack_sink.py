"""The Slack sink: a run's messages (see :mod:`rose.integrations.slack_messages`) posted once.

The webhook URL comes from an environment variable (``--webhook-env``,
default ``ROSE_SLACK_WEBHOOK``) or a 0600 file (``--webhook-file``), never
from the command line, and never reaches a log line.

Never twice.  Each run has a journal ``JOURNAL_DIR/<run>.json``: the next seq
to apply, the formatter's state, and which messages of the current event are
posted.  A message is marked *in flight* (fsynced) before its POST and
*posted* after Slack's 200.  A message found in flight after a crash, or one
whose POST got no reply, may have reached Slack: it is not sent again (it is
logged as possibly lost instead).  429 (after its Retry-After) and 5xx go back
to the runtime as retries with backoff; other 4xx replies are reported once
per event and the event is skipped, not retried forever.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rose.fileio import atomic_write_json, read_json
from rose.integrations.slack_messages import RunMessages, SlackOptions, milestone_list
from rose.integrations.slack_webhook import (
    DEFAULT_MIN_INTERVAL_S,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WEBHOOK_ENV,
    Delivery,
    Webhook,
    load_webhook_url,
)
from sinks.base import ApplyResult, RunSink, Sink
from sinks.journal import JournaledSink
from sinks.kinds import Option, SinkKind, split_list

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1


class SlackSink(JournaledSink):
    """Posts each run's messages to one incoming webhook; idempotent across restarts."""

    name = "slack"

    def __init__(
        self,
        webhook: Webhook,
        journal_dir: str | os.PathLike[str],
        options: SlackOptions | None = None,
    ) -> None:
        super().__init__(journal_dir)
        self.webhook = webhook
        self.options = options or SlackOptions()
        self.posted = 0
        self.rejected = 0
        self.unknown = 0

    def __repr__(self) -> str:
        return f"SlackSink(webhook=<redacted>, journal_dir={str(self.journal_dir)!r})"

    def open_run(self, run: str) -> RunSink:
        return SlackRunSink(self, run, self.journal_path(run))

    def stats(self) -> dict[str, int]:
        """For ``rose status``: posts that may or may not have reached Slack are not re-sent."""
        return {"posted": self.posted, "maybe_posted": self.unknown, "rejected": self.rejected}


class SlackRunSink(RunSink):
    """One run: its formatter state and delivery journal."""

    def __init__(self, sink: SlackSink, run: str, path: Path) -> None:
        self.sink = sink
        self.run = run
        self.path = path
        data = read_json(path)
        if not isinstance(data, dict) or data.get("v") != JOURNAL_VERSION:
            data = {
                "v": JOURNAL_VERSION,
                "next_seq": 0,
                "messages": None,
                "posted": [],
                "inflight": None,
            }
        self.journal = data
        self.messages = RunMessages.from_dict(run, sink.options, data.get("messages"))
        if data.get("inflight") is not None:
            seq, index = data["inflight"]
            log.warning(
                "slack: run %s: message %d of seq %d was being posted when the sink stopped; "
                "not sending it again (it may or may not have reached Slack)",
                run,
                index,
                seq,
            )
            data["posted"] = sorted({*data.get("posted", []), index})
            data["inflight"] = None
            self.sink.unknown += 1
            self._save()

    def resume_seq(self) -> int | None:
        return self.journal["next_seq"] or None

    def _save(self) -> None:
        atomic_write_json(self.path, self.journal)

    def apply(
        self, events: list[dict[str, Any]], lines: list[str | None] | None = None
    ) -> ApplyResult:
        dirty = False
        for i, event in enumerate(events):
            if event["seq"] < self.journal["next_seq"]:
                continue  # already applied by an earlier process
            after = self.messages.copy()
            texts = after.messages(event)
            for index, text in enumerate(texts):
                if index in self.journal["posted"]:
                    continue
                self.journal["inflight"] = [event["seq"], index]
                self._save()
                result = self.sink.webhook.post({"text": text})
                self.journal["inflight"] = None
                if result.delivery is Delivery.RETRY:
                    self._save()
                    return ApplyResult.retry(i, result.error, result.retry_after_s)
                self.journal["posted"].append(index)
                if result.delivery is Delivery.OK:
                    self.sink.posted += 1
                elif result.delivery is Delivery.UNKNOWN:
                    self.sink.unknown += 1
                    log.warning(
                        "slack: run %s seq %d: %s; not sending it again",
                        self.run,
                        event["seq"],
                        result.error,
                    )
                else:
                    self.sink.rejected += 1
                    self._commit(event, after)
                    return ApplyResult.reject(i, result.error)
                self._save()
            self._commit(event, after, save=False)
            dirty = True
        if dirty:
            self._save()
        return ApplyResult.ok(len(events))

    def _commit(self, event: dict[str, Any], after: RunMessages, *, save: bool = True) -> None:
        """``event`` is done (posted or given up): advance past it."""
        self.messages = after
        self.journal.update(
            next_seq=event["seq"] + 1, messages=after.to_dict(), posted=[], inflight=None
        )
        if save:
            self._save()


# ---------------------------------------------------------------- the kind (sinks.registry)


class SlackKind(SinkKind):
    name = "slack"
    help = "post each run's end (and optional start/milestones) to a Slack incoming webhook"
    epilog = """\
examples:
  export ROSE_SLACK_WEBHOOK=https://hooks.slack.com/services/...
  rose sink slack --bus ~/rose-tracking/store/bus.json --notify-start --milestones 0.1,0.05
  rose sink slack --bus ~/rose-tracking/store/bus.json --webhook-file ~/.config/rose/slack-webhook

The webhook URL is a secret: it is read from the environment variable named by
--webhook-env or from a file readable only by you (chmod 600), never from the
command line.  Each message is posted at most once, also across restarts.
"""
    options = (
        Option(
            "webhook_env",
            "environment variable holding the webhook URL (default: %(default)s)",
            default=DEFAULT_WEBHOOK_ENV,
            metavar="NAME",
        ),
        Option(
            "webhook_file",
            "file holding the webhook URL, mode 0600 (instead of the environment)",
            metavar="FILE",
        ),
        Option("notify_start", "also post when a run starts", switch=True),
        Option(
            "milestones",
            "also post when a learner's metric first passes each value",
            metavar="V1,V2,...",
        ),
        Option("learner_names", "names for parallel learners 0, 1, ...", metavar="A,B,..."),
        Option(
            "post_timeout",
            "wait this long for Slack's reply to a post; a post without reply is not sent "
            "again (it may have arrived) [%(default)s]",
            type=float,
            default=DEFAULT_TIMEOUT_S,
            metavar="SECONDS",
        ),
        Option(
            "min_interval",
            "at least this long between posts (Slack: ~1/s per webhook; default %(default)s)",
            type=float,
            default=DEFAULT_MIN_INTERVAL_S,
            metavar="SECONDS",
        ),
    )
    #: 429/5xx retries follow Retry-After and the runtime's backoff; give up after this many.
    max_attempts = 20

    def build(
        self,
        *,
        webhook_env: str = DEFAULT_WEBHOOK_ENV,
        webhook_file: str | None = None,
        notify_start: bool = False,
        milestones: str | None = None,
        learner_names: str | list[str] | None = None,
        post_timeout: float = DEFAULT_TIMEOUT_S,
        min_interval: float = DEFAULT_MIN_INTERVAL_S,
        state_dir: Path | None = None,
    ) -> SlackSink:
        url = load_webhook_url(env_var=webhook_env, file=webhook_file)
        options = SlackOptions(
            notify_start=bool(notify_start),
            milestones=milestone_list(milestones),
            learner_names=tuple(split_list(learner_names)) or None,
        )
        if min_interval < 0 or post_timeout <= 0:
            raise ValueError("--min-interval must be 0 or more seconds, --post-timeout more than 0")
        return SlackSink(
            Webhook(url, min_interval_s=min_interval, timeout_s=post_timeout),
            self.state_dir(state_dir) / "slack-runs",
            options,
        )

    def check(
        self,
        sink: Sink,
        *,
        webhook_env: str = DEFAULT_WEBHOOK_ENV,
        webhook_file: str | None = None,
        **_: Any,
    ) -> None:
        _check_reachable(load_webhook_url(env_var=webhook_env, file=webhook_file))


def _check_reachable(url: str, timeout_s: float = 5.0) -> None:
    """A webhook host that does not exist or refuses connections is a mistake: say so now.

    Only a TCP connect, nothing is posted; a host that is slow to answer is
    left to the runtime's retries.
    """
    import socket
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
        return  # a proxy connects for us; its answer tells
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except socket.gaierror:
        raise ValueError(f"the Slack webhook's host {host!r} is not found (a typo?)") from None
    except ConnectionRefusedError:
        raise ValueError(
            f"the Slack webhook's host {host!r} refuses connections on port {port}"
        ) from None
    except OSError as exc:
        log.warning("slack: cannot reach the webhook's host yet (%s); posts will be retried", exc)
