"""The broker's durable event store: append-only segment files with a global offset.

Layout of a store directory::

    store.json                  {"format": "rose-store", "version": 1, "store_id", "generation", ...}
    lock                        flock'ed by the broker that owns the store
    segments/<first offset>.seg records, appended in offset order
    quarantine/                 damaged bytes set aside by recovery, named by offset range

Records and their recovery after damage are described in :mod:`bus.segments`.

Appends reach the OS (``os.write``) before the broker forwards them, so a
``kill -9`` loses nothing a sink has seen; fsync is batched, so a power loss may
drop the unsynced tail.  A write that fails (disk full, quota, file size limit)
is undone (the file is cut back to its last whole record) and its records stay
buffered: ``write`` raises, readers see only ``durable_offset``, and the next
``write`` retries, so nothing is lost or torn while the disk is full.

Recovery at open loses only what is damaged (:mod:`bus.segments`).
``generation`` changes whenever the store opens after an unclean stop or
recovery removed records that may have been handed out; ``recoveries`` says,
for each new generation, the *safe offset* (the head right after that
recovery), so a reader whose position comes from an older generation knows
where to re-read from.  The store id (:mod:`bus.storemeta`) changes only when
the store is recreated, so a sink that remembers it notices a replaced store.

Reads serve run, seq and kind from the in-memory index of each segment and
slice the payload out of the record: no header is decoded after the open.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.segments import KIND_NO, REC, Damage, Segment, SegmentRecovery, fsync_dir, record
from bus.storemeta import STORE_FORMAT, STORE_VERSION, StoreError, read_meta
from bus.wire import StoredEvent, make_header, with_offset
from rose.events.schema import KINDS
from rose.fileio import atomic_write_json

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_FSYNC_INTERVAL_S = 0.2
#: The keyword options of EventStore (a broker passes them on).
STORE_OPTIONS = ("segment_bytes", "fsync_interval_s", "new_store_id")

#: Recovery history kept in store.json (older generations re-read from offset 0).
MAX_RECOVERIES = 64


@dataclass
class RunIndex:
    """What the store knows of one run: which seqs it holds and where."""

    number: int  # its index in EventStore.run_names (segments index runs by number)
    upto: int = 0  # every seq below this is stored
    extra: set[int] = field(default_factory=set)  # stored seqs >= upto
    first_seq: int = -1
    last_seq: int = -1
    count: int = 0
    last_offset: int = -1
    seqs: array = field(default_factory=lambda: array("q"))
    offsets: array = field(default_factory=lambda: array("q"))

    def has(self, seq: int) -> bool:
        return seq < self.upto or seq in self.extra

    def add(self, seq: int, offset: int) -> None:
        if seq == self.upto:
            self.upto += 1
            extra = self.extra
            while self.upto in extra:
                extra.discard(self.upto)
                self.upto += 1
        else:
            self.extra.add(seq)
        self.first_seq = seq if self.first_seq < 0 else min(self.first_seq, seq)
        self.last_seq = max(self.last_seq, seq)
        self.count += 1
        self.last_offset = offset
        self.seqs.append(seq)
        self.offsets.append(offset)


class EventStore(SegmentRecovery):
    """Append-only event store with (run, seq) dedupe and offset/run indexes.

    Not thread-safe: one broker thread owns it.  ``add`` indexes an event and
    buffers its record; ``write`` hands the buffered records to the OS in one
    call; ``maybe_sync`` fsyncs at most every ``fsync_interval_s``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S,
        new_store_id: bool = False,
    ) -> None:
        self.dir = Path(directory)
        #: A lost store.json beside segments no bus.json names: make a new id (loudly).
        self.new_store_id = new_store_id
        self.segment_bytes = segment_bytes
        self.fsync_interval_s = fsync_interval_s
        self.runs: dict[str, RunIndex] = {}
        self.run_names: list[str] = []
        self.next_offset = 0
        self._segments: list[Segment] = []
        self._firsts: list[int] = []
        self._wfd: int | None = None
        self._lock_fd: int | None = None
        self._buf: list[bytes] = []
        self._dirty = False
        #: Offsets below this are on disk (handed to the OS); above it, only buffered.
        self.durable_offset = 0
        self._written = 0  # bytes of the current segment file that hold whole records
        self._write_failed = False
        self._last_sync = time.monotonic()
        self.store_id = ""
        #: Changes whenever the store opens after an unclean stop or lost records.
        self.generation = 0
        #: One entry per generation change: {"generation", "safe_offset", "lost", "time"}.
        self.recoveries: list[dict[str, Any]] = []
        #: What the last open's recovery set aside (also in the log, once).
        self.damage: list[Damage] = []
        self._meta: dict[str, Any] = {}
        self._holes: set[tuple[int, int]] = set()
        self._open()

    # ------------------------------------------------------------ opening

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "segments").mkdir(exist_ok=True)
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreError(
                f"store {self.dir} is in use by another broker; stop it or use another --store"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())
        started = time.monotonic()
        try:
            self.store_id = self._load_meta()
            self._rebuild()
            self._new_generation()
        except BaseException:
            self._meta["clean"] = None  # not opened: close() must not mark a clean stop
            self.close()
            raise
        if self.next_offset:
            log.info(
                "store %s: %d events of %d runs indexed in %.2fs",
                self.dir,
                self.next_offset,
                len(self.runs),
                time.monotonic() - started,
            )

    def _load_meta(self) -> str:
        meta_path = self.dir / "store.json"
        meta = read_meta(self.dir, new_store_id=self.new_store_id)
        self._meta = meta
        self.generation = int(meta.get("generation") or 0)
        self.recoveries = [r for r in meta.get("recoveries") or [] if isinstance(r, dict)]
        self._holes = {(int(a), int(b)) for a, b in meta.get("holes") or []}
        if not meta_path.exists():
            self._save_meta()
        return str(meta["store_id"])

    def _save_meta(self, **changes: Any) -> None:
        self._meta.update(
            format=STORE_FORMAT,
            version=STORE_VERSION,
            store_id=self._meta.get("store_id") or self.store_id,
            generation=self.generation,
            recoveries=self.recoveries[-MAX_RECOVERIES:],
            holes=sorted(self._holes),
            **changes,
        )
        atomic_write_json(self.dir / "store.json", self._meta)
        fsync_dir(self.dir)

    def _new_generation(self) -> None:
        """Start a new generation when offsets handed out before may not hold any more.

        After a clean stop (``close``) that left the head where it was, and
        nothing damaged, the generation stays.  Otherwise (a crash: after a
        power loss the unsynced tail may be gone; damage set aside) readers
        from older generations must re-read from the head found now.
        """
        clean = bool(self._meta.get("clean")) and self._meta.get("next_offset") == self.next_offset
        lost = list(self.damage)
        if not clean or lost:
            self.generation += 1
            self.recoveries.append(
                {
                    "generation": self.generation,
                    "safe_offset": self.next_offset,
                    "lost": [[d.first, d.last] for d in lost],
                    "time": time.time(),
                }
            )
            del self.recoveries[:-MAX_RECOVERIES]
            if lost:
                events = sum(d.events or 0 for d in lost)
                tails = sum(1 for d in lost if d.events is None)
                log.error(
                    "store %s: recovery set aside %d damaged stretch(es) in %s: %s; %d "
                    "event(s) lost%s, every intact record kept (%d events up to offset %d); "
                    "generation %d (sinks re-read from offset %d and skip what they hold)",
                    self.dir,
                    len(lost),
                    self.dir / "quarantine",
                    "; ".join(d.describe() for d in lost),
                    events,
                    " plus a cut tail of unknown length" if tails else "",
                    sum(i.count for i in self.runs.values()),
                    self.next_offset - 1,
                    self.generation,
                    self.next_offset,
                )
            else:
                log.info(
                    "store %s: opened after an unclean stop; generation %d from offset %d",
                    self.dir,
                    self.generation,
                    self.next_offset,
                )
        self._save_meta(clean=False, next_offset=None)

    def _add_segment(self, seg: Segment) -> None:
        self._segments.append(seg)
        self._firsts.append(seg.first)

    def _roll(self) -> None:
        path = self.dir / "segments" / f"{self.next_offset:020d}.seg"
        # The new file first: if it cannot be made, records keep going to the old one.
        wfd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if self._wfd is not None:
            try:
                os.fsync(self._wfd)
            except OSError as exc:
                log.warning("store %s: fsync of a full segment failed: %s", self.dir, exc)
            os.close(self._wfd)
        self._wfd = wfd
        self._written = 0
        fsync_dir(path.parent)
        self._add_segment(Segment(self.next_offset, path))

    # ------------------------------------------------------------ writing

    def _index(self, run: str, seq: int, offset: int) -> RunIndex:
        idx = self.runs.get(run)
        if idx is None:
            idx = self.runs[run] = RunIndex(len(self.run_names))
            self.run_names.append(run)
        idx.add(seq, offset)
        return idx

    def contains(self, run: str, seq: int) -> bool:
        idx = self.runs.get(run)
        return idx is not None and idx.has(seq)

    def add(
        self, run: str, seq: int, kind: str, payload: bytes, header: bytes | None = None
    ) -> tuple[int, bytes] | None:
        """Index a new event and buffer its record; None when (run, seq) is already stored.

        ``header`` is the learner's checked wire header (packed here when not
        given).  Returns (offset, header with offset), the header to forward.
        Call ``write`` before telling anyone about the offset.
        """
        idx = self.runs.get(run)
        if idx is not None and idx.has(seq):
            return None
        if kind not in KIND_NO:  # the broker has checked it; refuse before anything changes
            raise ValueError(f"unknown event kind {kind!r}")
        offset = self.next_offset
        stored = with_offset(
            make_header(run, seq, kind) if header is None else header, run, seq, kind, offset
        )
        prefix, body = record(stored, payload)
        seg = self._segments[-1]
        pos = seg.size
        seg.size += len(prefix) + len(body)
        self._buf.append(prefix)
        self._buf.append(body)
        seg.append(pos, offset, self._index(run, seq, offset).number, seq, kind)
        self.next_offset += 1
        if seg.size >= self.segment_bytes:
            try:
                self.write()
                self._roll()
            except OSError as exc:  # the caller's next write() reports it
                log.debug("store %s: cannot roll the segment yet: %s", self.dir, exc)
        return offset, stored

    def write(self) -> None:
        """Hand every buffered record to the OS, all or nothing.

        On failure (OSError: disk full, quota, EFBIG, EIO) the partial write is
        cut off again, the records stay buffered and the error propagates;
        call ``write`` again later to retry.
        """
        if not self._buf or self._wfd is None:
            return
        data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
        self._buf = [data]
        fd = self._wfd
        if self._write_failed and os.fstat(fd).st_size != self._written:
            os.ftruncate(fd, self._written)  # a torn attempt that could not be undone then
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(fd, view[done:])
        except OSError:
            self._write_failed = True
            if done:
                try:
                    os.ftruncate(fd, self._written)
                except OSError as exc:
                    log.debug("store %s: cannot cut a failed write back yet: %s", self.dir, exc)
            raise
        self._buf.clear()
        self._written += len(data)
        self.durable_offset = self.next_offset
        self._write_failed = False
        self._dirty = True

    @property
    def buffered(self) -> int:
        """Events indexed but not yet on disk (non-zero while writes fail)."""
        return self.next_offset - self.durable_offset

    def maybe_sync(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._dirty and now - self._last_sync >= self.fsync_interval_s:
            self.sync(now)

    def sync(self, now: float | None = None) -> None:
        # Stamped first: a failing fsync is tried again at the next interval, not every turn.
        self._last_sync = time.monotonic() if now is None else now
        self.write()
        if self._dirty and self._wfd is not None:
            os.fsync(self._wfd)
            self._dirty = False

    def close(self) -> None:
        """Write and fsync what is buffered, then release the files and the lock.

        Raises OSError when buffered records could not be written (they are
        lost from the store; publishers re-send their recent events to the next
        broker, which stores what is missing).
        """
        try:
            if self._wfd is not None:
                try:
                    self.sync()
                    self._mark_clean()
                finally:
                    os.close(self._wfd)
                    self._wfd = None
        finally:
            for seg in self._segments:
                seg.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _mark_clean(self) -> None:
        """Everything is on disk: the next open keeps this generation (if the head is here)."""
        if self._meta.get("clean") is None:
            return
        try:
            self._save_meta(clean=True, next_offset=self.next_offset)
        except OSError as exc:
            log.warning("store %s: cannot mark a clean stop: %s", self.dir, exc)

    # ------------------------------------------------------------ reading

    def read(
        self, from_offset: int, limit: int, max_bytes: int = 8 * 1024 * 1024
    ) -> list[StoredEvent]:
        """Events on disk with offset >= from_offset, in offset order (at least one if any).

        Run, seq and kind come from the index; only payloads are read from disk.
        """
        try:
            self.write()
        except OSError as exc:  # serve what is on disk; the writer reports the failure
            log.debug("store %s: read before a failed write: %s", self.dir, exc)
        out: list[StoredEvent] = []
        offset = max(0, from_offset)
        total = 0
        durable = self.durable_offset
        names = self.run_names
        hlen_at = REC.size
        while offset < durable and len(out) < limit and total < max_bytes:
            i = max(0, bisect.bisect_right(self._firsts, offset) - 1)
            seg = self._segments[i]
            k = bisect.bisect_left(seg.offsets, offset)
            stop = bisect.bisect_left(seg.offsets, durable)
            n = min(limit - len(out), stop - k)
            if n <= 0:
                if i + 1 < len(self._segments) and k >= len(seg.offsets):
                    offset = max(offset, self._segments[i + 1].first)  # a hole up to the next
                    continue
                break
            positions = seg.positions
            start = positions[k]
            end = positions[k + n] if k + n < len(positions) else seg.size
            data = os.pread(seg.reader(), end - start, start)
            for j in range(k, k + n):
                pos = positions[j] - start
                length = int.from_bytes(data[pos : pos + 4], "little")
                hlen = int.from_bytes(data[pos + hlen_at : pos + hlen_at + 2], "little")
                payload = data[pos + hlen_at + 2 + hlen : pos + hlen_at + length]
                out.append(
                    StoredEvent(seg.offsets[j], names[seg.runs[j]], seg.seqs[j],
                                KINDS[seg.kinds[j]], payload)  # fmt: skip
                )
                total += length
                if total >= max_bytes:
                    break
            offset = out[-1].offset + 1
        return out

    def read_one(self, offset: int) -> StoredEvent:
        (ev,) = self.read(offset, 1)
        return ev

    def run_offsets(self, run: str, from_seq: int = 0) -> list[int]:
        """Offsets of a run's events with seq >= from_seq, in seq order."""
        idx = self.runs.get(run)
        if idx is None:
            return []
        durable = self.durable_offset
        pairs = sorted(
            (s, o)
            for s, o in zip(idx.seqs, idx.offsets, strict=True)
            if s >= from_seq and o < durable
        )
        return [o for _s, o in pairs]

    def acks(self, runs: set[str]) -> dict[str, tuple[int, int, int]]:
        """How far each of ``runs`` is stored: {run: (upto, last seq, count)} (see bus.wire)."""
        return {
            r: (idx.upto, idx.last_seq, idx.count)
            for r in runs
            if (idx := self.runs.get(r)) is not None
        }

    def run_summaries(self) -> list[dict[str, Any]]:
        return [
            {
                "run": run,
                "first_seq": idx.first_seq,
                "last_seq": idx.last_seq,
                "count": idx.count,
                "last_offset": idx.last_offset,
            }
            for run, idx in self.runs.items()
        ]
