"""The store's segment files: the record format, and recovery of damaged segments.

A segment ``segments/<first offset>.seg`` holds records appended in offset
order.  A record is ``u32 body length | u32 crc32(body) | body`` with
``body = u16 header length | header | payload``; the header is the wire header
*with* the event's offset (:func:`bus.wire.with_offset`), so forwarding
reuses it and a restart rebuilds every index from the segments alone.  Every
stored header starts with the same bytes (:data:`bus.wire.STORED_HEADER_MARK`),
which serve as the record marker when recovery resynchronises after damage.

Headers are decoded and checked only here, when a store opens; after that
the store reads run, seq and kind from its in-memory index and slices the
payload out of the body.

Recovery loses only what is damaged: a record whose length, CRC or header is
wrong is skipped by resynchronising on the next valid record; its bytes go to
``quarantine/`` with their offset range, the segment is rewritten without
them, and the store logs the loss once.  Offsets are never renumbered, so the
damaged offsets stay a hole.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bus.wire import STORED_HEADER_MARK, Header, WireError, decode_header
from rose.events.schema import KINDS

if TYPE_CHECKING:
    from bus.store import RunIndex

log = logging.getLogger("bus.store")  # the name its messages have in the log (docs/troubleshooting.md)

REC = struct.Struct("<II")  # body length, crc32(body)
HLEN = struct.Struct("<H")  # header length, first in the body
_MARK = STORED_HEADER_MARK
_MARK_AT = REC.size + HLEN.size  # the marker's position in a record
#: A kind's number in a segment's index (and back).
KIND_NO = {k: i for i, k in enumerate(KINDS)}


def record(header: bytes, payload: bytes) -> tuple[bytes, bytes]:
    """The two parts of a record, ``REC`` prefix and body, to append in that order."""
    body = HLEN.pack(len(header)) + header + payload
    return REC.pack(len(body), zlib.crc32(body)), body


def parse_body(body: bytes) -> Header:
    """The checked header of a record's body (WireError or struct.error when it is not one)."""
    (hlen,) = HLEN.unpack_from(body, 0)
    return decode_header(body[HLEN.size : HLEN.size + hlen], need_offset=True)


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


class Segment:
    """One segment file and the index of its records: where each is, and its routing key."""

    __slots__ = ("first", "path", "positions", "offsets", "runs", "seqs", "kinds", "size", "rfd")

    def __init__(self, first: int, path: Path) -> None:
        self.first = first
        self.path = path
        self.positions = array("q")
        self.offsets = array("q")  # offset of the record at each position (holes skipped)
        self.runs = array("I")  # the run's number in the store (EventStore.run_names)
        self.seqs = array("q")
        self.kinds = array("B")  # KIND_NO of the kind
        self.size = 0
        self.rfd: int | None = None

    def append(self, pos: int, offset: int, run_no: int, seq: int, kind: str) -> None:
        self.positions.append(pos)
        self.offsets.append(offset)
        self.runs.append(run_no)
        self.seqs.append(seq)
        self.kinds.append(KIND_NO[kind])

    def reader(self) -> int:
        if self.rfd is None:
            self.rfd = os.open(self.path, os.O_RDONLY)
        return self.rfd

    def close(self) -> None:
        if self.rfd is not None:
            os.close(self.rfd)
            self.rfd = None


class SegmentRecovery:
    """Opening a store's segments: index every valid record, set damaged stretches aside.

    Part of :class:`bus.store.EventStore`, kept apart because it is its own
    job: it runs once per open and is the only reader of headers.
    """

    # provided by EventStore
    dir: Path
    next_offset: int
    durable_offset: int
    segment_bytes: int
    damage: list[Damage]
    _holes: set[tuple[int, int]]
    _segments: list[Segment]
    _wfd: int | None
    _written: int
    _index: Callable[[str, int, int], RunIndex]
    _roll: Callable[[], None]
    _add_segment: Callable[[Segment], None]

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
            seg = Segment(first, path)
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

    def _scan(self, seg: Segment) -> None:
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
                run_no = self._index(rec.run, rec.seq, rec.offset).number
                seg.append(pos - removed, rec.offset, run_no, rec.seq, rec.kind)
                spans.append((pos, rec_end))
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

    def _record_at(self, data: bytes, pos: int) -> tuple[Header | None, int]:
        """The valid record starting at ``pos`` (None if there is none) and where it ends."""
        if pos + REC.size + HLEN.size > len(data):
            return None, pos
        length, crc = REC.unpack_from(data, pos)
        body_end = pos + REC.size + length
        if length < HLEN.size or body_end > len(data):
            return None, pos
        body = data[pos + REC.size : body_end]
        if zlib.crc32(body) != crc:
            return None, pos
        try:
            rec = parse_body(body)
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

    def _set_aside(self, seg: Segment, data: bytes, first: int, last: int | None) -> str:
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
        fsync_dir(qdir)
        return str(path)

    def _rewrite(self, seg: Segment, data: bytes) -> None:
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
        fsync_dir(seg.path.parent)


def fsync_dir(path: Path) -> None:
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
