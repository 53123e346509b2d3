"""The broker's durable event store: append-only segment files with a global offset.

Layout of a store directory::

    store.json                  {"format": "rose-store", "version": 1, "store_id", "generation", ...}
    lock                        flock'ed by the broker that owns the store
    segments/<first offset>.seg records, appended in offset order
    quarantine/                 damaged bytes set aside by recovery, named by offset range

A record is ``u32 body length | u32 crc32(body) | body`` with
``body = u16 header length | header | payload``; the header is the wire header
*with* the event's offset, so forwarding reuses it and a restart rebuilds every
index from the segments alone.  Every header starts with the same bytes (a
msgpack map whose first key is ``v``), which serve as the record marker when
recovery resynchronises after damage: no format change was needed for it.

Appends reach the OS (``os.write``) before the broker forwards them, so a
``kill -9`` loses nothing a sink has seen; fsync is batched, so a power loss may
drop the unsynced tail.  A write that fails (disk full, quota, file size limit)
is undone (the file is cut back to its last whole record) and its records stay
buffered: ``write`` raises, readers see only ``durable_offset``, and the next
``write`` retries, so nothing is lost or torn while the disk is full.

Recovery at open loses only what is damaged: a record whose length, CRC or
header is wrong is skipped by resynchronising on the next valid record; its
bytes go to ``quarantine/`` with their offset range, the segment is rewritten
without them, and the loss is logged once.  Offsets are never renumbered, so
the damaged offsets stay a hole.  ``generation`` changes whenever the store
opens after an unclean stop or recovery removed records that may have been
handed out; ``recoveries`` says, for each new generation, the *safe offset*
(the head right after that recovery), so a reader whose position comes from an
older generation knows where to re-read from.  The store id changes only when
the store is recreated, so a sink that remembers it notices a replaced store.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import os
import struct
import time
import uuid
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from bus.wire import BUS_FILE, WireError, decode_header, stored_header_prefix
from rose.fileio import atomic_write_json

log = logging.getLogger(__name__)

STORE_FORMAT = "rose-store"
STORE_VERSION = 1
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_FSYNC_INTERVAL_S = 0.2

#: Recovery history kept in store.json (older generations re-read from offset 0).
MAX_RECOVERIES = 64
#: The first bytes of every stored header (msgpack map of 5 keys, then "v"): the record marker.
_MARK = b"\x85\xa1v"
_MARK_AT = 10  # the marker's position in a record: u32 length, u32 crc, u16 header length

_REC = struct.Struct("<II")
_HLEN = struct.Struct("<H")
_OFFSET_KEY = msgpack.packb("offset")


class StoreError(RuntimeError):
    """The store cannot be opened (locked by another broker, unreadable, wrong format)."""


class Record(NamedTuple):
    offset: int
    run: str
    seq: int
    kind: str
    header: bytes  # the wire header, offset included
    payload: bytes


@dataclass
class RunIndex:
    """What the store knows of one run: which seqs it holds and where."""

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


@dataclass
class Damage:
    """A damaged stretch of a segment found by recovery (``last`` None: a cut tail)."""

    segment: str
    first: int  # first offset lost
    last: int | None  # last offset lost; None when unknown (a torn or corrupt tail)
    nbytes: int
    quarantine: str = ""

    @property
    def events(self) -> int | None:
        return None if self.last is None else self.last - self.first + 1

    def describe(self) -> str:
        where = f"offsets {self.first}..{self.last}" if self.last is not None else (
            f"the tail from offset {self.first}"
        )
        n = "" if self.events is None else f" ({self.events} event(s))"
        return f"{where}{n}, {self.nbytes} bytes of {self.segment}"


class _Segment:
    __slots__ = ("first", "path", "positions", "offsets", "size", "rfd")

    def __init__(self, first: int, path: Path) -> None:
        self.first = first
        self.path = path
        self.positions = array("q")
        self.offsets = array("q")  # offset of the record at each position (holes skipped)
        self.size = 0
        self.rfd: int | None = None

    def reader(self) -> int:
        if self.rfd is None:
            self.rfd = os.open(self.path, os.O_RDONLY)
        return self.rfd

    def close(self) -> None:
        if self.rfd is not None:
            os.close(self.rfd)
            self.rfd = None


class EventStore:
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
        self.next_offset = 0
        self._segments: list[_Segment] = []
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
        self._prefixes: dict[tuple[str, str], bytes] = {}
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
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError as exc:
                raise StoreError(f"{meta_path} is not valid JSON: {exc}") from None
            if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
                raise StoreError(
                    f"{meta_path}: unsupported store format {meta.get('format')!r} "
                    f"version {meta.get('version')!r}"
                )
        else:
            meta = self._meta_for_missing_file(meta_path)
        self._meta = meta
        self.generation = int(meta.get("generation") or 0)
        self.recoveries = [r for r in meta.get("recoveries") or [] if isinstance(r, dict)]
        self._holes = {(int(a), int(b)) for a, b in meta.get("holes") or []}
        if not meta_path.exists():
            self._save_meta()
        return str(meta["store_id"])

    def _meta_for_missing_file(self, meta_path: Path) -> dict[str, Any]:
        """A new store's metadata; a missing store.json beside segments is recovered or refused."""
        segments = [p for p in (self.dir / "segments").glob("*.seg") if p.stat().st_size]
        fresh = {"format": STORE_FORMAT, "version": STORE_VERSION, "generation": 0}
        if not segments:
            return {**fresh, "store_id": uuid.uuid4().hex, "clean": True, "next_offset": 0}
        bus = self.dir / BUS_FILE
        try:
            info = json.loads(bus.read_text())
            store_id = str(info["store_id"])
            generation = int(info.get("generation") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            if self.new_store_id:
                store_id = uuid.uuid4().hex
                log.error(
                    "store %s: store.json was missing beside %d segment(s); serving them "
                    "under the new store id %s (--new-store-id)",
                    self.dir,
                    len(segments),
                    store_id,
                )
                return {**fresh, "store_id": store_id, "clean": False}
            raise StoreError(
                f"{meta_path} is missing but {self.dir / 'segments'} holds {len(segments)} "
                "segment(s) of events, and no bus.json there says which store they belong to: "
                "restore store.json from a backup, or start the broker with --new-store-id to "
                "keep these events under a new store id (sinks then re-read the store and skip "
                "what they already hold)"
            ) from None
        log.error(
            "store %s: store.json was missing beside %d segment(s); recovered store id %s "
            "(generation %d) from bus.json",
            self.dir,
            len(segments),
            store_id,
            generation,
        )
        return {**fresh, "store_id": store_id, "generation": generation, "clean": False}

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
        _fsync_dir(self.dir)

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

    def _rebuild(self) -> None:
        paths = sorted((self.dir / "segments").glob("*.seg"))
        for path in paths:
            try:
                first = int(path.stem)
            except ValueError:
                log.warning("store %s: ignoring stray file %s", self.dir, path.name)
                continue
            if first < self.next_offset:
                self._quarantine(
                    [path], f"segment {path.name} overlaps offsets up to {self.next_offset - 1}"
                )
                continue
            if first > self.next_offset and not self._known_hole(self.next_offset, first - 1):
                self.damage.append(Damage(path.name, self.next_offset, first - 1, 0))
                self._holes.add((self.next_offset, first - 1))
            self.next_offset = max(self.next_offset, first)
            seg = _Segment(first, path)
            self._scan(seg)
            self._add_segment(seg)
        self.durable_offset = self.next_offset
        if self._segments and self._segments[-1].size < self.segment_bytes:
            self._wfd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
            self._written = self._segments[-1].size
        else:
            self._roll()

    def _known_hole(self, first: int, last: int) -> bool:
        return any(a <= first and last <= b for a, b in self._holes)

    def _quarantine(self, paths: list[Path], why: str) -> None:
        if not paths:
            return
        qdir = self.dir / "quarantine"
        qdir.mkdir(exist_ok=True)
        for p in paths:
            os.replace(p, qdir / p.name)
        log.error("store %s: moved %d segment(s) to %s: %s", self.dir, len(paths), qdir, why)

    def _scan(self, seg: _Segment) -> None:
        """Index a segment's valid records; set damaged stretches aside and rewrite it without."""
        with seg.path.open("rb") as f:
            data = f.read()
        spans: list[tuple[int, int]] = []  # (start, end) of each valid record, in order
        bad: list[tuple[int, int, int, int | None]] = []  # (start, end, first, last offset)
        pos, end = 0, len(data)
        removed = 0  # bytes before ``pos`` that the rewritten segment will not hold
        while pos < end:
            rec, rec_end = self._record_at(data, pos)
            if rec is not None:
                if rec.offset > self.next_offset and not self._known_hole(
                    self.next_offset, rec.offset - 1
                ):
                    bad.append((pos, pos, self.next_offset, rec.offset - 1))
                    self._holes.add((self.next_offset, rec.offset - 1))
                seg.positions.append(pos - removed)
                seg.offsets.append(rec.offset)
                spans.append((pos, rec_end))
                self._index(rec.run, rec.seq, rec.offset)
                self.next_offset = rec.offset + 1
                pos = rec_end
                continue
            nxt = self._resync(data, pos + 1)
            if nxt is None:
                bad.append((pos, end, self.next_offset, None))
                break
            rec, _ = self._record_at(data, nxt)
            assert rec is not None
            bad.append((pos, nxt, self.next_offset, rec.offset - 1))
            self._holes.add((self.next_offset, rec.offset - 1))
            self.next_offset = rec.offset  # the damaged offsets stay a hole
            removed += nxt - pos
            pos = nxt
        kept = sum(b - a for a, b in spans)
        seg.size = kept
        if not bad:
            return
        for start, stop, first, last in bad:
            damage = Damage(seg.path.name, first, last, stop - start)
            if stop > start:
                damage.quarantine = self._set_aside(seg, data[start:stop], first, last)
            self.damage.append(damage)
        if kept == end:
            return
        if not spans or spans[-1][1] == kept:  # only the tail is bad: cut it off
            os.truncate(seg.path, kept)
        else:
            self._rewrite(seg, b"".join(data[a:b] for a, b in spans))

    def _record_at(self, data: bytes, pos: int) -> tuple[Record | None, int]:
        """The valid record starting at ``pos`` (None if there is none) and where it ends."""
        if pos + _REC.size + _HLEN.size > len(data):
            return None, pos
        length, crc = _REC.unpack_from(data, pos)
        body_end = pos + _REC.size + length
        if length < _HLEN.size or body_end > len(data):
            return None, pos
        body = data[pos + _REC.size : body_end]
        if zlib.crc32(body) != crc:
            return None, pos
        try:
            rec = _parse_body(body)
        except (WireError, struct.error):
            return None, pos
        if rec.offset < self.next_offset:
            return None, pos  # offsets only grow: this is not where the log goes on
        return rec, body_end

    def _resync(self, data: bytes, start: int) -> int | None:
        """Where the next valid record after damage starts (found by its marker), or None."""
        at = start + _MARK_AT
        while True:
            j = data.find(_MARK, at)
            if j < 0:
                return None
            if self._record_at(data, j - _MARK_AT)[0] is not None:
                return j - _MARK_AT
            at = j + 1

    def _set_aside(self, seg: _Segment, data: bytes, first: int, last: int | None) -> str:
        """Copy damaged bytes to quarantine/<segment>.<first>-<last>.damaged (fsynced)."""
        qdir = self.dir / "quarantine"
        qdir.mkdir(exist_ok=True)
        name = f"{seg.path.stem}.{first}-{'end' if last is None else last}.damaged"
        path = qdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(qdir)
        return str(path)

    def _rewrite(self, seg: _Segment, data: bytes) -> None:
        """Replace a segment by its valid records only (temp file, fsync, rename)."""
        tmp = seg.path.with_suffix(".rewrite")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += os.write(fd, view[done:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, seg.path)
        _fsync_dir(seg.path.parent)

    def _add_segment(self, seg: _Segment) -> None:
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
        _fsync_dir(path.parent)
        self._add_segment(_Segment(self.next_offset, path))

    # ------------------------------------------------------------ writing

    def _index(self, run: str, seq: int, offset: int) -> None:
        idx = self.runs.get(run)
        if idx is None:
            idx = self.runs[run] = RunIndex()
        idx.add(seq, offset)

    def contains(self, run: str, seq: int) -> bool:
        idx = self.runs.get(run)
        return idx is not None and idx.has(seq)

    def add(self, run: str, seq: int, kind: str, payload: bytes) -> tuple[int, bytes] | None:
        """Index a new event and buffer its record; None when (run, seq) is already stored.

        Returns (offset, header with offset).  Call ``write`` before telling
        anyone about the offset.
        """
        idx = self.runs.get(run)
        if idx is not None and idx.has(seq):
            return None
        offset = self.next_offset
        prefix = self._prefixes.get((run, kind))
        if prefix is None:
            if len(self._prefixes) > 4096:
                self._prefixes.clear()
            prefix = self._prefixes[run, kind] = stored_header_prefix(run, kind)
        header = prefix + msgpack.packb(seq) + _OFFSET_KEY + msgpack.packb(offset)
        body = _HLEN.pack(len(header)) + header + payload
        seg = self._segments[-1]
        seg.positions.append(seg.size)
        seg.offsets.append(offset)
        seg.size += _REC.size + len(body)
        self._buf.append(_REC.pack(len(body), zlib.crc32(body)))
        self._buf.append(body)
        self._index(run, seq, offset)
        self.next_offset += 1
        if seg.size >= self.segment_bytes:
            try:
                self.write()
                self._roll()
            except OSError as exc:  # the caller's next write() reports it
                log.debug("store %s: cannot roll the segment yet: %s", self.dir, exc)
        return offset, header

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
        self.write()
        if self._dirty and self._wfd is not None:
            os.fsync(self._wfd)
            self._dirty = False
        self._last_sync = time.monotonic() if now is None else now

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

    def read(self, from_offset: int, limit: int, max_bytes: int = 8 * 1024 * 1024) -> list[Record]:
        """Records on disk with offset >= from_offset, in offset order (at least one if any)."""
        try:
            self.write()
        except OSError as exc:  # serve what is on disk; the writer reports the failure
            log.debug("store %s: read before a failed write: %s", self.dir, exc)
        out: list[Record] = []
        offset = max(0, from_offset)
        total = 0
        durable = self.durable_offset
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
                length, _crc = _REC.unpack_from(data, pos)
                out.append(_parse_body(data[pos + _REC.size : pos + _REC.size + length]))
                total += length
                if total >= max_bytes:
                    break
            offset = out[-1].offset + 1
        return out

    def read_one(self, offset: int) -> Record:
        (rec,) = self.read(offset, 1)
        return rec

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


def _parse_body(body: bytes) -> Record:
    (hlen,) = _HLEN.unpack_from(body, 0)
    header = body[_HLEN.size : _HLEN.size + hlen]
    h = decode_header(header, need_offset=True)
    return Record(h.offset, h.run, h.seq, h.kind, header, body[_HLEN.size + hlen :])  # type: ignore[arg-type]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
