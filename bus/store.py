"""The broker's durable event store: append-only segment files with a global offset.

Layout of a store directory::

    store.json                  {"format": "rose-store", "version": 1, "store_id": ...}
    lock                        flock'ed by the broker that owns the store
    segments/<first offset>.seg records, appended in offset order

A record is ``u32 body length | u32 crc32(body) | body`` with
``body = u16 header length | header | payload``; the header is the wire header
*with* the event's offset, so forwarding reuses it and a restart rebuilds every
index from the segments alone.  Appends reach the OS (``os.write``) before the
broker forwards them, so a ``kill -9`` loses nothing a sink has seen; fsync is
batched, so a power loss may drop the unsynced tail.  A torn or corrupt tail is
cut off at start.  A write that fails (disk full, quota, file size limit) is
undone (the file is cut back to its last whole record) and its records stay
buffered: ``write`` raises, readers see only ``durable_offset``, and the next
``write`` retries, so nothing is lost or torn while the disk is full.  The store id changes only when the store is recreated, so a
sink that remembers it notices a replaced store.
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

from bus.wire import WireError, decode_header, stored_header_prefix
from rose.fileio import atomic_write_json

log = logging.getLogger(__name__)

STORE_FORMAT = "rose-store"
STORE_VERSION = 1
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_FSYNC_INTERVAL_S = 0.2

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


class _Segment:
    __slots__ = ("first", "path", "positions", "size", "rfd")

    def __init__(self, first: int, path: Path) -> None:
        self.first = first
        self.path = path
        self.positions = array("q")
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
    ) -> None:
        self.dir = Path(directory)
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
        self.store_id = self._load_meta()
        started = time.monotonic()
        self._rebuild()
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
            return str(meta["store_id"])
        store_id = uuid.uuid4().hex
        atomic_write_json(
            meta_path, {"format": STORE_FORMAT, "version": STORE_VERSION, "store_id": store_id}
        )
        _fsync_dir(self.dir)
        return store_id

    def _rebuild(self) -> None:
        paths = sorted((self.dir / "segments").glob("*.seg"))
        for i, path in enumerate(paths):
            try:
                first = int(path.stem)
            except ValueError:
                log.warning("store %s: ignoring stray file %s", self.dir, path.name)
                continue
            if first != self.next_offset:
                self._quarantine(
                    paths[i:], f"segment {path.name} does not start at offset {self.next_offset}"
                )
                break
            seg = _Segment(first, path)
            good = self._scan(seg)
            self._add_segment(seg)
            if good < path.stat().st_size:
                log.warning(
                    "store %s: cutting a torn or corrupt tail of %d bytes off %s "
                    "(a crash mid-write)",
                    self.dir,
                    path.stat().st_size - good,
                    path.name,
                )
                os.truncate(path, good)
                seg.size = good
                self._quarantine(paths[i + 1 :], "after a corrupt segment")
                break
        self.durable_offset = self.next_offset
        if self._segments and self._segments[-1].size < self.segment_bytes:
            self._wfd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
            self._written = self._segments[-1].size
        else:
            self._roll()

    def _quarantine(self, paths: list[Path], why: str) -> None:
        if not paths:
            return
        qdir = self.dir / "quarantine"
        qdir.mkdir(exist_ok=True)
        for p in paths:
            os.replace(p, qdir / p.name)
        log.error("store %s: moved %d segment(s) to %s: %s", self.dir, len(paths), qdir, why)

    def _scan(self, seg: _Segment) -> int:
        """Index a segment's records; return the size of its valid prefix."""
        with seg.path.open("rb") as f:
            data = f.read()
        pos, end = 0, len(data)
        while pos + _REC.size <= end:
            length, crc = _REC.unpack_from(data, pos)
            body_end = pos + _REC.size + length
            if body_end > end:
                break
            body = data[pos + _REC.size : body_end]
            if zlib.crc32(body) != crc:
                break
            try:
                rec = _parse_body(body)
            except (WireError, struct.error):
                break
            if rec.offset != self.next_offset:
                break
            seg.positions.append(pos)
            self._index(rec.run, rec.seq, rec.offset)
            self.next_offset += 1
            pos = body_end
        seg.size = pos
        return pos

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
                finally:
                    os.close(self._wfd)
                    self._wfd = None
        finally:
            for seg in self._segments:
                seg.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

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
        while offset < self.durable_offset and len(out) < limit and total < max_bytes:
            i = bisect.bisect_right(self._firsts, offset) - 1
            seg = self._segments[i]
            k = offset - seg.first
            n = min(limit - len(out), len(seg.positions) - k, self.durable_offset - offset)
            if n <= 0:
                break
            start = seg.positions[k]
            end = seg.positions[k + n] if k + n < len(seg.positions) else seg.size
            data = os.pread(seg.reader(), end - start, start)
            pos = 0
            for _ in range(n):
                length, _crc = _REC.unpack_from(data, pos)
                body = data[pos + _REC.size : pos + _REC.size + length]
                out.append(_parse_body(body))
                pos += _REC.size + length
                total += length
                offset += 1
                if total >= max_bytes:
                    break
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
