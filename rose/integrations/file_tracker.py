"""The built-in tracker: an append-only JSON Lines event log, no dependencies.

Each line is one event (see :mod:`rose.events`), so the file is both a
replayable event log and easy to load::

    import pandas
    df = pandas.json_normalize([json.loads(l) for l in open("run.jsonl")])

Every completed iteration is on disk (handed to the OS) before the learner
moves on, so a preempted job keeps all of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rose.eventlog import EventLogWriter, read_events
from rose.events.feed import EventFeed, EventTracker
from rose.tracking import TrackerBase


class FileTracker(EventTracker):
    """Append every event of a run to ``path``.

    ``path`` is a file, or a directory (an existing one, or any path ending in
    ``/``), in which case the log is ``<dir>/<run id>.jsonl``, the name the
    file sink uses too.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self._target = Path(path).expanduser()
        is_dir = self._target.is_dir() or str(path).endswith(("/", os.sep))
        self._writer: EventLogWriter | None = None
        self.path: Path | None = None if is_dir else self._target

    def emit(self, event: dict[str, Any]) -> None:
        if self._writer is None:
            self.path = self.path or self._target / f"{event['run']}.jsonl"
            self._writer = EventLogWriter(self.path)
        self._writer.append(event)
        if event["kind"] == "stop":
            self.close()  # fsyncs; a later run on this tracker reopens in append mode

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def replay(path: str | os.PathLike[str], tracker: TrackerBase, *, strict: bool = False) -> int:
    """Drive ``tracker`` from an event log as the learner did; returns the events fed."""
    return EventFeed(tracker).feed(read_events(path, strict=strict))
