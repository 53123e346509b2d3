"""Event logs on disk: one event per line of JSON, append-only.

The same format serves the in-process FileTracker, the file sink, learner
spools and replay, so any of them can be read back into any tracker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from rose.events.jsonl import from_json_line, to_json_line
from rose.events.schema import MAX_JSON_LINE_BYTES, EventError

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


class EventLogReader:
    """One pass over a JSONL event log: ``(line, event)`` in file order, bad lines counted.

    The one reader of event logs (:func:`read_events`, the sinks' log source).
    Lines are read bounded: one longer than any event's line is bad, and is
    skipped without being held in memory.  A torn last line (a writer killed
    mid-line) is skipped with a warning.  Any other bad line raises EventError
    naming the line when ``strict``; otherwise it is skipped, counted in
    ``bad_lines`` and logged once per file with the count.  ``on_bytes`` is
    told how many bytes each line took (progress bars).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        strict: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.strict = strict
        self.on_bytes = on_bytes
        self.bad_lines = 0

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        path, on_bytes = self.path, self.on_bytes
        first_error = ""
        with path.open("rb") as f:
            lineno = 0
            while raw := f.readline(_READ_LIMIT):
                lineno += 1
                size = len(raw)
                long = size == _READ_LIMIT and not raw.endswith(b"\n")
                if long:
                    size += _skip_rest_of_line(f)
                if on_bytes is not None:
                    on_bytes(size)
                torn = not long and not raw.endswith(b"\n")
                try:
                    if long:
                        raise EventError(f"line longer than {MAX_JSON_LINE_BYTES} bytes")
                    if not raw.strip():
                        continue
                    text = raw.decode()
                    event = from_json_line(text)
                except (EventError, UnicodeDecodeError) as exc:
                    if torn:
                        log.warning(
                            "%s: ignoring a torn last line %d (writer interrupted)", path, lineno
                        )
                        continue
                    if self.strict:
                        raise EventError(f"{path}:{lineno}: {exc}") from None
                    self.bad_lines += 1
                    first_error = first_error or f"line {lineno}: {exc}"
                    continue
                yield (text + "\n" if torn else text), event
        if self.bad_lines:
            log.warning("%s: skipped %d bad line(s); first: %s", path, self.bad_lines, first_error)


#: A line is read up to this many bytes: one byte more than the longest valid line.
_READ_LIMIT = MAX_JSON_LINE_BYTES + 2
_CHUNK = 1024 * 1024


def _skip_rest_of_line(f: BinaryIO) -> int:
    """Read past the end of an overlong line, a chunk at a time; how many bytes that was."""
    skipped = 0
    while chunk := f.readline(_CHUNK):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def read_events(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the events of a JSONL event log in file order (see :class:`EventLogReader`)."""
    for _line, event in EventLogReader(path, strict=strict):
        yield event
