"""The durable store: segments, torn tails, corruption, locking."""

from __future__ import annotations

import pytest

from bus.store import EventStore, StoreError


def _fill(store: EventStore, run: str, n: int, start: int = 0) -> None:
    for seq in range(start, start + n):
        assert store.add(run, seq, "iteration", b"p" * 50) is not None
    store.write()


def test_segments_roll_and_read_across_them(tmp_path):
    store = EventStore(tmp_path, segment_bytes=1000)
    _fill(store, "r", 100)
    assert len(list((tmp_path / "segments").glob("*.seg"))) > 5
    recs = store.read(3, 1000)
    assert [r.offset for r in recs] == list(range(3, 100))
    assert all(r.payload == b"p" * 50 and r.run == "r" for r in recs)
    store.close()
    store = EventStore(tmp_path, segment_bytes=1000)
    assert store.next_offset == 100 and store.runs["r"].count == 100
    assert store.add("r", 7, "iteration", b"") is None
    store.close()


def test_torn_tail_is_cut_and_offsets_continue(tmp_path):
    store = EventStore(tmp_path)
    _fill(store, "r", 10)
    store.close()
    (seg,) = (tmp_path / "segments").glob("*.seg")
    size = seg.stat().st_size
    with seg.open("r+b") as f:
        f.truncate(size - 7)  # the last record loses its tail
    store = EventStore(tmp_path)
    assert store.next_offset == 9 and not store.contains("r", 9)
    _fill(store, "r", 1, start=9)
    assert [r.seq for r in store.read(0, 100)] == list(range(10))
    store.close()


def test_corruption_mid_store_quarantines_what_follows(tmp_path):
    store = EventStore(tmp_path, segment_bytes=500)
    _fill(store, "r", 30)
    store.close()
    segs = sorted((tmp_path / "segments").glob("*.seg"))
    data = bytearray(segs[1].read_bytes())
    data[20] ^= 0xFF  # flip a byte in the first record of the second segment
    segs[1].write_bytes(bytes(data))
    store = EventStore(tmp_path, segment_bytes=500)
    kept = store.next_offset
    assert 0 < kept < 30
    assert [r.offset for r in store.read(0, 100)] == list(range(kept))
    assert len(list((tmp_path / "quarantine").glob("*.seg"))) == len(segs) - 2
    store.close()


def test_one_broker_per_store(tmp_path):
    store = EventStore(tmp_path)
    with pytest.raises(StoreError, match="in use"):
        EventStore(tmp_path)
    store.close()
    EventStore(tmp_path).close()


def test_a_failed_write_is_undone_and_retried(tmp_path, monkeypatch):
    """Disk full mid-write: nothing torn on disk, nothing readable that is not there, retry."""
    import errno
    import os

    import bus.store

    store = EventStore(tmp_path)
    _fill(store, "r", 5)
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:7]))  # a short write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bus.store.os, "write", full_disk)
    for seq in range(5, 10):
        assert store.add("r", seq, "iteration", b"q" * 50) is not None
    with pytest.raises(OSError):
        store.write()
    (seg,) = (tmp_path / "segments").glob("*.seg")
    size = seg.stat().st_size
    assert store.buffered == 5 and store.durable_offset == 5
    assert [r.seq for r in store.read(0, 100)] == list(range(5))  # only what is on disk
    assert store.run_offsets("r") == list(range(5))
    assert store.add("r", 7, "iteration", b"") is None  # still deduplicated meanwhile
    with pytest.raises(OSError):
        store.write()
    assert seg.stat().st_size == size
    monkeypatch.setattr(bus.store.os, "write", real_write)
    store.write()
    assert store.buffered == 0
    assert [r.seq for r in store.read(0, 100)] == list(range(10))
    store.close()
    store = EventStore(tmp_path)  # and the file is whole
    assert store.next_offset == 10
    store.close()
