"""The file sink: ``OUT/<run>.jsonl``, the same bytes the in-process FileTracker writes.

Lines come from :func:`rose.events.to_json_line` (or, on replay, the line as
recorded), appended through :class:`rose.eventlog.EventLogWriter`.  The file
is its own checkpoint: on open the sink drops a torn last line (a writer
killed mid-line) and reads the last line's seq, so a restarted sink never
appends an event the file already holds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from rose.eventlog import EventLogWriter, read_events
from rose.events.identity import check_run_id
from rose.events.jsonl import to_json_line
from rose.events.schema import EventError
from sinks.base import ApplyResult, RunSink, Sink
from sinks.kinds import STATE_ROOT, Option, SinkKind
from sinks.state import OutputLock

log = logging.getLogger(__name__)

#: Held (flock) by the file sink writing a directory; not a *.jsonl, so replays skip it.
OUT_LOCK_FILE = ".rose-file-sink.lock"

_TAIL_CHUNK = 64 * 1024


def run_log_path(out_dir: str | os.PathLike[str], run: str) -> Path:
    """``out_dir/<run>.jsonl`` for a validated run id; never a path outside ``out_dir``."""
    check_run_id(run)
    out = Path(out_dir).resolve()
    path = (out / f"{run}.jsonl").resolve()
    if path.parent != out:
        raise EventError(f"run id {run[:80]!r} does not name a file inside {out}")
    return path


def _last_line_start(f: Any, end: int) -> int:
    """Offset where the line ending at ``end`` (exclusive, on a newline) starts."""
    pos = end - 1  # the final newline itself
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        f.seek(start)
        chunk = f.read(pos - start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def repair_tail(path: Path, *, quiet: bool = False) -> int | None:
    """Drop a torn last line; return the last complete event's seq (None if empty).

    ``quiet``: the torn line is this sink's own failed write (logged by the
    runtime as the failure it is), so cutting it is not worth a warning each retry.
    """
    try:
        f = path.open("r+b")
    except FileNotFoundError:
        return None
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) != b"\n":
            keep = _last_line_start(f, size + 1)  # treat EOF as the end of the torn line
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "%s: dropping a torn last line (%d bytes)",
                path,
                size - keep,
            )
            f.truncate(keep)
            size = keep
            if size == 0:
                return None
        start = _last_line_start(f, size)
        f.seek(start)
        line = f.read(size - start)
    try:
        seq = json.loads(line)["seq"]
        if isinstance(seq, int) and not isinstance(seq, bool):
            return seq
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("%s: last line is not an event; scanning the whole file", path)
    seqs = [e["seq"] for e in read_events(path)]
    return max(seqs) if seqs else None


class FileSink(Sink):
    """Writes each run to ``out_dir/<run>.jsonl``; idempotent across restarts."""

    name = "file"
    idempotent = True

    def __init__(self, out_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.fsync = fsync
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = OutputLock(
            self.out_dir / OUT_LOCK_FILE,
            f"{self.out_dir} is being written by another file sink (pid {{pid}}): two sinks "
            "on one --out write every event twice; stop that one, or give this one another --out",
        )

    def claim_outputs(self) -> None:
        self._lock.acquire()

    def release_outputs(self) -> None:
        self._lock.release()

    def open_run(self, run: str) -> RunSink:
        return FileRunSink(run_log_path(self.out_dir, run), fsync=self.fsync)


class FileRunSink(RunSink):
    """One run's log file, appended in whole lines."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._last = repair_tail(path)
        self._writer: EventLogWriter | None = None
        self._unsynced = False

    def resume_seq(self) -> int | None:
        return None if self._last is None else self._last + 1

    def apply(
        self, events: list[dict[str, Any]], lines: list[str | None] | None = None
    ) -> ApplyResult:
        if lines is None:
            data = "".join([to_json_line(e) for e in events])
        else:
            data = "".join([ln or to_json_line(e) for e, ln in zip(events, lines, strict=True)])
        try:
            if self._writer is None:
                self._writer = EventLogWriter(self.path)
            self._writer.append_line(data)
        except OSError as exc:
            return self._after_error(events, exc)
        self._last = events[-1]["seq"]
        self._unsynced = True
        return ApplyResult.ok(len(events))

    def _after_error(self, events: list[dict[str, Any]], exc: OSError) -> ApplyResult:
        # Part of the batch may be on disk: the file says how far it got.
        self._close_writer()
        try:
            self._last = repair_tail(self.path, quiet=True)
        except OSError:
            return ApplyResult.retry(0, f"{self.path}: {exc}")
        first = events[0]["seq"]
        done = 0 if self._last is None else max(0, min(len(events), self._last - first + 1))
        return ApplyResult.retry(done, f"{self.path}: {exc.strerror or exc}")

    def flush(self) -> bool:
        if self._writer is None or not self._unsynced or not self.fsync:
            return True
        try:
            self._writer.sync()
            self._unsynced = False
            return True
        except OSError as exc:
            log.warning("%s: fsync failed: %s", self.path, exc)
            return False

    def close(self) -> None:
        self._close_writer()

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError as exc:
                log.warning("%s: close failed: %s", self.path, exc)


# ------------------------------------------------------------------ the kind (sinks.registry)


class FileKind(SinkKind):
    name = "file"
    help = "write each run to OUT/<run>.jsonl (the FileTracker's format, byte for byte)"
    epilog = """\
examples:
  rose sink file --bus ~/rose-tracking/store/bus.json --out runs/
  rose sink file --backend tcp://127.0.0.1:5556 --replay tcp://127.0.0.1:5557 --out runs/
  rose replay runs/*.jsonl --into file --out copy/

The files are the checkpoint: a restarted sink never appends an event a
file already holds, and drops a torn last line left by a killed writer.
"""
    options = (
        Option("out", "directory for the <run>.jsonl files (created if missing)", metavar="DIR"),
        Option(
            "no_fsync",
            "do not fsync files at checkpoints (faster; a node crash may lose the tail)",
            switch=True,
        ),
    )
    #: Disk errors are usually transient (full disk, NFS hiccup): retry forever by default.
    max_attempts = None
    #: Runs are separate files: ``rose replay --into file`` may split logs over processes.
    parallel_replay = True

    def build(
        self, *, out: str | None = None, no_fsync: bool = False, state_dir: Path | None = None
    ) -> FileSink:
        if not out:
            raise ValueError("the file sink needs --out DIR")
        path = Path(out).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {path} exists and is not a directory")
        return FileSink(path, fsync=not no_fsync)

    def default_state_dir(self, *, out: str | None = None, **_: Any) -> Path:
        return Path(out or ".").expanduser() / STATE_ROOT
