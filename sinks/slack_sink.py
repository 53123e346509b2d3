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

from rose.events import check_run_id
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

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1


class SlackSink(Sink):
    """Posts each run's messages to one incoming webhook; idempotent across restarts."""

    name = "slack"
    idempotent = True

    def __init__(
        self,
        webhook: Webhook,
        journal_dir: str | os.PathLike[str],
        options: SlackOptions | None = None,
    ) -> None:
        self.webhook = webhook
        self.options = options or SlackOptions()
        self.journal_dir = Path(journal_dir)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self.posted = 0
        self.rejected = 0
        self.unknown = 0

    def __repr__(self) -> str:
        return f"SlackSink(webhook=<redacted>, journal_dir={str(self.journal_dir)!r})"

    def open_run(self, run: str) -> RunSink:
        check_run_id(run)
        return SlackRunSink(self, run, self.journal_dir / f"{run}.json")

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


# ---------------------------------------------------------------- CLI hooks (sinks.registry)

CLI_HELP = "post each run's end (and optional start/milestones) to a Slack incoming webhook"
CLI_EPILOG = """\
examples:
  export ROSE_SLACK_WEBHOOK=https://hooks.slack.com/services/...
  rose sink slack --bus ~/rose-tracking/store/bus.json --notify-start --milestones 0.1,0.05
  rose sink slack --bus ~/rose-tracking/store/bus.json --webhook-file ~/.config/rose/slack-webhook

The webhook URL is a secret: it is read from the environment variable named by
--webhook-env or from a file readable only by you (chmod 600), never from the
command line.  Each message is posted at most once, also across restarts.
"""
#: 429/5xx retries follow Retry-After and the runtime's backoff; give up after this many.
DEFAULT_MAX_ATTEMPTS: int | None = 20


def add_cli_arguments(parser: Any, *, positional: bool = True) -> None:
    parser.add_argument(
        "--webhook-env",
        metavar="NAME",
        default=DEFAULT_WEBHOOK_ENV,
        help="environment variable holding the webhook URL (default: %(default)s)",
    )
    parser.add_argument(
        "--webhook-file",
        metavar="FILE",
        help="file holding the webhook URL, mode 0600 (instead of the environment)",
    )
    parser.add_argument("--notify-start", action="store_true", help="also post when a run starts")
    parser.add_argument(
        "--milestones",
        metavar="V1,V2,...",
        help="also post when a learner's metric first passes each value",
    )
    parser.add_argument(
        "--learner-names", metavar="A,B,...", help="names for parallel learners 0, 1, ..."
    )
    parser.add_argument(
        "--post-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="wait this long for Slack's reply to a post; a post without reply is not sent "
        "again (it may have arrived) [%(default)s]",
    )
    parser.add_argument(
        "--min-interval",
        type=float,
        default=DEFAULT_MIN_INTERVAL_S,
        metavar="SECONDS",
        help="at least this long between posts (Slack: ~1/s per webhook; default %(default)s)",
    )


def build_sink(args: Any) -> SlackSink:
    url = load_webhook_url(env_var=args.webhook_env, file=args.webhook_file)
    names = [n.strip() for n in (args.learner_names or "").split(",") if n.strip()]
    options = SlackOptions(
        notify_start=bool(args.notify_start),
        milestones=milestone_list(args.milestones),
        learner_names=tuple(names) or None,
    )
    if args.min_interval < 0 or args.post_timeout <= 0:
        raise ValueError("--min-interval must be 0 or more seconds, --post-timeout more than 0")
    _check_reachable(url)
    state = getattr(args, "state", None)
    state_dir = Path(state).expanduser() if state else default_state_dir(args)
    return SlackSink(
        Webhook(url, min_interval_s=args.min_interval, timeout_s=args.post_timeout),
        state_dir / "slack-runs",
        options,
    )


def default_state_dir(args: Any) -> Path:
    return Path(".rose-sink") / "slack"


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
