"""Event logs on disk: one event per line of JSON, append-only.

The same format serves the in-process FileTracker, the file sink, learner
spools and replay, so any of them can be read back into any tracker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rose.events import EventError, from_json_line, to_json_line

log = logging.getLogger(__name__)


class EventLogWriter:
    """Appends events to a JSONL file, each line handed to the OS as it is written.

    A line reaches the kernel before ``append`` returns, so a killed process
    loses nothing it appended; ``sync()`` (called by ``close``) also fsyncs
    for node crashes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, event: dict[str, Any]) -> None:
        self.append_line(to_json_line(event))

    def append_line(self, line: str) -> None:
        if self._fd is None:
            raise ValueError(f"event log {self.path} is closed")
        data = line.encode()
        written = os.write(self._fd, data)
        while written < len(data):  # short writes are rare but legal
            written += os.write(self._fd, data[written:])

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> EventLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the events of a JSONL event log in file order.

    A torn last line (a writer killed mid-line) is skipped with a warning.
    Any other bad line raises EventError naming the line when ``strict``;
    otherwise it is skipped, and the skips are logged once with a count.
    """
    path = Path(path)
    bad = 0
    first_error = ""
    with path.open("rb") as f:
        lineno = 0
        for raw in f:
            lineno += 1
            if not raw.strip():
                continue
            torn = not raw.endswith(b"\n")
            try:
                yield from_json_line(raw)
            except EventError as exc:
                if torn:
                    log.warning(
                        "%s: ignoring a torn last line %d (writer interrupted)", path, lineno
                    )
                    continue
                if strict:
                    raise EventError(f"{path}:{lineno}: {exc}") from None
                bad += 1
                first_error = first_error or f"line {lineno}: {exc}"
    if bad:
        log.warning("%s: skipped %d bad line(s); first: %s", path, bad, first_error)
