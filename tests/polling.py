"""Waiting in tests: poll a condition with a bound, and pick a free loopback port."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], T],
    what: str = "condition",
    *,
    timeout: float = 20.0,
    every: float = 0.02,
) -> T:
    """Poll ``predicate`` until it returns something true, and return that value.

    A timeout is an AssertionError that names ``what`` was awaited, so a test
    that forgets to ``assert`` the result still fails.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
