"""An example sink kind: one CSV file per run, one row per iteration.

``OUT/<run>.csv`` has the columns ``seq, ts, iteration, learner_id,
metric_name, metric_value, should_stop`` and then one column per state key
named with ``--keys``.  Start and stop events write no row.

It is a package of its own (``pyproject.toml`` next to this file) whose entry
point in the ``rose.sinks`` group names :class:`CsvKind`; once installed, the
``rose`` command has the kind::

    pip install examples/custom_sink
    rose replay runs/ --into csv --out table/
    rose sink csv --bus ~/rose-tracking/store/bus.json --out table/

The file is its own checkpoint, like the file sink's: on open, a torn last
row (a writer killed mid-row) is cut off and the last row's seq says where
the run resumes, so a restart or a second replay never writes a row twice.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

from rose.events import check_run_id
from sinks.base import ApplyResult, RunSink, Sink
from sinks.kinds import STATE_ROOT, Option, SinkKind, split_list

log = logging.getLogger(__name__)

COLUMNS = ["seq", "ts", "iteration", "learner_id", "metric_name", "metric_value", "should_stop"]


def cell(value: Any) -> str:
    """One CSV cell; never a line break, so every row is exactly one line."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return repr(value)  # repr keeps every digit of a float
    return " ".join(str(value).splitlines())


def render(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


class CsvSink(Sink):
    """Opens one :class:`CsvRunSink` per run, in ``out_dir``."""

    name = "csv"
    idempotent = True  # each file knows the last seq it holds: see resume_seq

    def __init__(self, out_dir: str | os.PathLike[str], keys: list[str] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.keys = list(keys or [])
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def open_run(self, run: str) -> RunSink:
        check_run_id(run)  # letters, digits, . _ - only: the path stays inside out_dir
        return CsvRunSink(self.out_dir / f"{run}.csv", self.keys)


class CsvRunSink(RunSink):
    """One run's CSV file, appended a batch at a time."""

    def __init__(self, path: Path, keys: list[str]) -> None:
        self.path = path
        self.header = COLUMNS + keys
        self._file: Any = None
        self._last_seq = self._repair()

    def _repair(self) -> int | None:
        """Cut a torn last row; return the seq of the last complete row (None: no rows)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a torn last row (%d bytes)", self.path, len(data) - keep)
            os.truncate(self.path, keep)
            data = data[:keep]
        lines = data.decode().splitlines()
        if not lines:
            return None
        header = next(csv.reader([lines[0]]))
        if header != self.header:
            log.warning("%s: keeping the file's own columns %s", self.path, header)
            self.header = header
        if len(lines) == 1:
            return None  # a header and no row yet
        return int(next(csv.reader([lines[-1]]))[0])

    def resume_seq(self) -> int | None:
        return None if self._last_seq is None else self._last_seq + 1

    def row(self, event: dict[str, Any]) -> list[str]:
        body = event["body"]
        values = {"seq": event["seq"], "ts": event["ts"], **body}
        state = body["state"]
        return [cell(values.get(c)) if c in COLUMNS else cell(state.get(c)) for c in self.header]

    def apply(
        self, events: list[dict[str, Any]], lines: list[str | None] | None = None
    ) -> ApplyResult:
        rows = [self.row(e) for e in events if e["kind"] == "iteration"]
        if rows:
            try:
                if self._file is None:
                    new = not self.path.exists() or self.path.stat().st_size == 0
                    self._file = self.path.open("a", encoding="utf-8", newline="")
                    if new:
                        rows.insert(0, self.header)
                self._file.write(render(rows))
                self._file.flush()  # hand the rows to the OS: a killed sink loses none
            except OSError as exc:
                return self._after_error(events, exc)
            self._last_seq = int(rows[-1][0])
        return ApplyResult.ok(len(events))

    def _after_error(self, events: list[dict[str, Any]], exc: OSError) -> ApplyResult:
        """Part of the batch may be on disk: the file says how far it got."""
        self.close()
        try:
            self._last_seq = self._repair()
        except OSError:
            return ApplyResult.retry(0, f"{self.path}: {exc}")
        first = events[0]["seq"]
        done = 0 if self._last_seq is None else max(0, min(len(events), self._last_seq - first + 1))
        return ApplyResult.retry(done, f"{self.path}: {exc.strerror or exc}")

    def flush(self) -> bool:
        if self._file is None:
            return True
        try:
            os.fsync(self._file.fileno())
            return True
        except OSError as exc:
            log.warning("%s: fsync failed: %s", self.path, exc)
            return False

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                log.warning("%s: close failed: %s", self.path, exc)


# ------------------------------------------------------------------ the kind (entry point rose.sinks)


class CsvKind(SinkKind):
    name = "csv"
    help = "one CSV file per run, OUT/<run>.csv, a row per iteration (example kind)"
    epilog = """\
examples:
  rose sink csv --bus ~/rose-tracking/store/bus.json --out table/ --keys train_loss
  rose replay runs/ --into csv --out table/
"""
    options = (
        Option("out", "directory for the files (created if missing)", metavar="DIR"),
        Option("keys", "state keys to add as columns (csv)", default="", metavar="K1,K2,..."),
    )
    #: Disk errors are usually transient (full disk, NFS hiccup): retry forever by default.
    max_attempts = None

    def build(
        self, *, out: str | None = None, keys: str | list[str] = "", state_dir: Path | None = None
    ) -> CsvSink:
        if not out:
            raise ValueError("the csv sink needs --out DIR")
        path = Path(out).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {path} exists and is not a directory")
        columns = split_list(keys)
        clash = sorted(set(columns) & set(COLUMNS))
        if clash:
            raise ValueError(f"--keys {','.join(clash)}: already a column")
        return CsvSink(path, columns)

    def default_state_dir(self, **options: Any) -> Path:
        return STATE_ROOT / "csv"
