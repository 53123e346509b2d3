"""Posting to a Slack incoming webhook: the secret, the rate limit, and what a reply means.

The webhook URL is a secret (anyone holding it can post to the channel).  It
is read from an environment variable or from a file only the owner can read
(mode 0600), never from a command line, and it never appears in a log line,
an exception message or a ``repr``.

One :meth:`Webhook.post` is one HTTP attempt, classified so that callers can
keep the promise "a message is never posted twice":

* ``OK``: Slack took it;
* ``RETRY``: Slack certainly did not post it (429 with its Retry-After, 5xx,
  or the request never got through): safe to send again later;
* ``REJECTED``: a 4xx other than 429 (bad payload, revoked webhook, archived
  channel): sending it again cannot help;
* ``UNKNOWN``: the request was sent but no reply came (timeout, reset):
  Slack may have posted it, so it must not be sent again.
"""

from __future__ import annotations

import enum
import http.client
import json
import logging
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_WEBHOOK_ENV = "ROSE_SLACK_WEBHOOK"
#: Slack allows about one message per second per webhook (short bursts tolerated).
DEFAULT_MIN_INTERVAL_S = 1.0
DEFAULT_TIMEOUT_S = 10.0
#: A Retry-After longer than this is capped: a sink must stay responsive.
MAX_RETRY_AFTER_S = 300.0

_HINTS = {
    400: "Slack refused the payload",
    403: "the webhook may not post here (action_prohibited)",
    404: "no such webhook: it was revoked or the URL is wrong",
    410: "the channel was archived or the webhook removed",
}


class Delivery(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PostResult:
    delivery: Delivery
    status: int | None = None
    error: str = ""
    retry_after_s: float | None = None


def load_webhook_url(
    *, env_var: str | None = DEFAULT_WEBHOOK_ENV, file: str | os.PathLike[str] | None = None
) -> str:
    """The webhook URL from ``file`` (mode 0600) if given, else from ``$env_var``.

    Raises ValueError saying how to fix it; the message never contains the URL.
    """
    if file is not None:
        path = Path(file).expanduser()
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise ValueError(f"cannot read the webhook file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(
                f"the webhook file {path} is readable by others (mode {stat.S_IMODE(mode):04o}): "
                f"run chmod 600 {path}"
            )
        url = path.read_text().strip()
        source = f"file {path}"
    else:
        if not env_var:
            raise ValueError("give a webhook environment variable or a webhook file")
        url = os.environ.get(env_var, "").strip()
        source = f"${env_var}"
        if not url:
            raise ValueError(
                f"no Slack webhook: set {env_var} to the incoming-webhook URL "
                "(or give a 0600 webhook file)"
            )
    check_webhook_url(url, source)
    return url


def check_webhook_url(url: str, source: str = "the webhook URL") -> None:
    if not url.startswith(("https://", "http://")) or any(c.isspace() for c in url):
        raise ValueError(f"{source} does not hold an http(s) URL")


def _retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), capped; None when absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError):
            return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


class Webhook:
    """One incoming webhook: rate-limited, classified posts; the URL stays private."""

    def __init__(
        self,
        url: str,
        *,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        check_webhook_url(url)
        self.__url = url
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_at = 0.0
        self.posted = 0

    def __repr__(self) -> str:
        return "Webhook(<redacted>)"

    def _redact(self, text: str) -> str:
        return text.replace(self.__url, "<webhook>")

    def _pace(self) -> None:
        """Wait for the rate limit (at most ``min_interval_s``)."""
        with self._lock:
            wait = self._next_at - self._clock()
            if wait > 0:
                self._sleep(wait)
            self._next_at = self._clock() + self.min_interval_s

    def hold_off(self, seconds: float) -> None:
        """Slack asked for a pause (429): no post from this webhook before it ends."""
        with self._lock:
            self._next_at = max(self._next_at, self._clock() + seconds)

    def post(self, payload: dict[str, Any]) -> PostResult:
        """One attempt to post ``payload`` (e.g. ``{"text": ...}``)."""
        self._pace()
        data = json.dumps(payload).encode()
        request = urllib.request.Request(
            self.__url, data=data, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
                self.posted += 1
                return PostResult(Delivery.OK, response.status)
        except urllib.error.HTTPError as exc:
            return self._classify(exc)
        except urllib.error.URLError as exc:
            # Raised while connecting or sending: Slack never got the whole request.
            reason = self._redact(str(getattr(exc, "reason", exc)))
            return PostResult(Delivery.RETRY, None, f"cannot reach Slack: {reason}")
        except (OSError, http.client.HTTPException) as exc:
            # Sent, but no reply: Slack may have posted it.
            why = self._redact(f"{type(exc).__name__}: {exc}")
            return PostResult(Delivery.UNKNOWN, None, f"no reply from Slack ({why})")

    def _classify(self, exc: urllib.error.HTTPError) -> PostResult:
        try:
            body = exc.read(200).decode("utf-8", errors="replace").strip()
        except Exception:
            body = ""
        body = self._redact(body)
        code = exc.code
        if code == 429:
            after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            if after is not None:
                self.hold_off(after)
            return PostResult(
                Delivery.RETRY, code, f"rate limited by Slack (HTTP 429 {body})", after
            )
        if code >= 500:
            after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            return PostResult(
                Delivery.RETRY, code, f"Slack error HTTP {code} {body}".strip(), after
            )
        hint = _HINTS.get(code, "Slack rejected the message")
        return PostResult(Delivery.REJECTED, code, f"{hint} (HTTP {code} {body})".strip())


def deliver(
    webhook: Webhook,
    payload: dict[str, Any],
    *,
    max_attempts: int = 5,
    backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
    sleep: Callable[[float], Any] = time.sleep,
    stop: threading.Event | None = None,
) -> PostResult:
    """Post with bounded retries: Retry-After and 5xx honoured, backoff doubling up to a cap."""
    result = PostResult(Delivery.RETRY, None, "not attempted")
    for attempt in range(1, max_attempts + 1):
        result = webhook.post(payload)
        if result.delivery is not Delivery.RETRY or attempt == max_attempts:
            break
        delay = min(max_backoff_s, backoff_s * 2 ** (attempt - 1))
        if result.retry_after_s is not None:
            delay = min(max(delay, result.retry_after_s), MAX_RETRY_AFTER_S)
        log.info(
            "slack: %s; attempt %d of %d in %.1fs", result.error, attempt + 1, max_attempts, delay
        )
        if stop is not None:
            if stop.wait(delay):
                break
        else:
            sleep(delay)
    return result
