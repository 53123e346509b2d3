"""Run identity: run ids (made, sanitized, checked) and the origin a start event carries."""

from __future__ import annotations

import getpass
import os
import re
import socket
import uuid
from typing import Any

from rose.events.schema import EventError

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def sanitize_run_name(name: str) -> str:
    """Turn a user's run name into something safe for file names and topics."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-_")
    return cleaned[:64]


def new_run_id(name: str | None = None) -> str:
    """A fresh run id: uuid4 hex, prefixed by the sanitized run name when given."""
    hex_id = uuid.uuid4().hex
    prefix = sanitize_run_name(name) if name else ""
    return f"{prefix}-{hex_id}" if prefix else hex_id


def check_run_id(run: Any) -> str:
    if not isinstance(run, str) or not RUN_ID_RE.match(run):
        raise EventError(
            f"invalid run id {str(run)[:80]!r}: expected [A-Za-z0-9._-], at most 128 chars"
        )
    return run


def make_origin() -> dict[str, Any]:
    """Where a run comes from; stamped once per learner on its start event."""
    from rose import __version__

    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user, "rose": __version__}
