"""Sinks whose backend cannot say what it holds keep a journal per run instead.

``journal_dir/<run>.json`` records how far the run got (and what is in flight),
so that a restarted sink, or a replay, neither repeats nor skips an event.  The
ClearML and Slack sinks are such sinks.
"""

from __future__ import annotations

import os
from pathlib import Path

from rose.events.identity import check_run_id
from sinks.base import Sink


class JournaledSink(Sink):
    """A sink with one journal file per run under ``journal_dir`` (created if missing)."""

    idempotent = True

    def __init__(self, journal_dir: str | os.PathLike[str]) -> None:
        self.journal_dir = Path(journal_dir)
        self.journal_dir.mkdir(parents=True, exist_ok=True)

    def journal_path(self, run: str) -> Path:
        """``journal_dir/<run>.json`` for a valid run id (never a path outside the directory)."""
        check_run_id(run)
        return self.journal_dir / f"{run}.json"
