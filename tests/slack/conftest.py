"""A local stand-in for Slack's incoming webhook: records requests, answers as scripted."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SECRET = "T000SECRET/B000SECRET/xoxbSECRETtoken123"


@dataclass
class FakeSlack:
    """``replies`` are (status, headers, body) answered in order; then 200 "ok"."""

    url: str = ""
    received: list[dict] = field(default_factory=list)
    replies: deque = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def texts(self) -> list[str]:
        with self.lock:
            return [r["json"]["text"] for r in self.received if r["status"] == 200]

    def script(self, *replies: tuple) -> None:
        with self.lock:
            self.replies.extend(replies)

    @property
    def attempts(self) -> int:
        with self.lock:
            return len(self.received)


def _handler(slack: FakeSlack):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with slack.lock:
                status, headers, text = (
                    slack.replies.popleft() if slack.replies else (200, {}, "ok")
                )
                slack.received.append(
                    {
                        "path": self.path,
                        "content_type": self.headers["Content-Type"],
                        "json": json.loads(body),
                        "status": status,
                    }
                )
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args):
            pass

    return Handler


@contextlib.contextmanager
def serving(secret: str) -> Iterator[FakeSlack]:
    """A FakeSlack on a loopback port; its ``url`` is a webhook whose path holds ``secret``."""
    fake = FakeSlack()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="fake-slack", daemon=True
    )
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_port}/services/{secret}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def slack():
    with serving(SECRET) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)


from tests.sinks.conftest import sink_process  # noqa: E402, F401 - the shared fixture
