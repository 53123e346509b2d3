"""The durable store: segments, torn tails, corruption, locking."""

from __future__ import annotations

import os

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


def _record_starts(store: EventStore) -> list[int]:
    (seg,) = store._segments
    return list(seg.positions)


def test_a_flipped_record_loses_only_itself(tmp_path, caplog):
    store = EventStore(tmp_path)
    _fill(store, "r", 600)
    positions = _record_starts(store)
    store.close()
    (seg,) = (tmp_path / "segments").glob("*.seg")
    data = bytearray(seg.read_bytes())
    for i in range(4):  # four bytes inside record 300's payload; its framing stays intact
        data[positions[301] - 20 + i] ^= 0xFF
    seg.write_bytes(bytes(data))
    caplog.set_level("ERROR")
    store = EventStore(tmp_path)
    assert [r.offset for r in store.read(0, 1000)] == [o for o in range(600) if o != 300]
    assert store.next_offset == 600 and not store.contains("r", 300)
    assert store.runs["r"].count == 599
    (damage,) = store.damage
    assert (damage.first, damage.last, damage.events) == (300, 300, 1)
    (q,) = (tmp_path / "quarantine").iterdir()
    assert q.name.endswith(".300-300.damaged") and q.read_bytes() == bytes(
        data[positions[300] : positions[301]]
    )
    assert store.generation == 1 and store.recoveries[-1]["safe_offset"] == 600
    assert [r for r in caplog.records if "damaged" in r.getMessage()] and len(caplog.records) == 1
    _fill(store, "r", 1, start=600)  # offsets go on past the hole, never reused
    assert store.read(600, 10)[0].offset == 600
    store.close()
    caplog.clear()
    store = EventStore(tmp_path)  # the segment was rewritten: nothing new to report
    assert store.damage == [] and store.generation == 1 and not caplog.records
    assert store.runs["r"].count == 600 and len(store.read(0, 1000)) == 600
    store.close()


def test_damage_across_records_resyncs_on_the_next_valid_one(tmp_path):
    store = EventStore(tmp_path, segment_bytes=2000)
    _fill(store, "r", 60)
    store.close()
    segs = sorted((tmp_path / "segments").glob("*.seg"))
    data = bytearray(segs[1].read_bytes())
    data[5:200] = b"\0" * 195  # zeros over the first records of the second segment
    segs[1].write_bytes(bytes(data))
    store = EventStore(tmp_path, segment_bytes=2000)
    offsets = [r.offset for r in store.read(0, 1000)]
    (damage,) = store.damage
    lost = set(range(damage.first, damage.last + 1))
    assert 1 <= len(lost) <= 3 and offsets == [o for o in range(60) if o not in lost]
    assert len(list((tmp_path / "segments").glob("*.seg"))) == len(segs)
    store.close()


def test_an_unclean_stop_starts_a_new_generation(tmp_path):
    store = EventStore(tmp_path)
    _fill(store, "r", 10)
    store.close()
    store = EventStore(tmp_path)
    assert store.generation == 0  # a clean stop keeps it
    _fill(store, "r", 5, start=10)
    store.write()
    # no close(): a crash; then a power cut takes the last 3 records away
    cut = store._segments[-1].positions[12]
    os.close(store._lock_fd)  # the process is gone: its lock with it
    store._lock_fd = None
    (seg,) = (tmp_path / "segments").glob("*.seg")
    os.truncate(seg, cut)
    store = EventStore(tmp_path)
    assert store.next_offset == 12 and store.generation == 1
    assert store.recoveries[-1]["safe_offset"] == 12
    store.close()


def test_missing_store_json_is_recovered_from_bus_json_or_refused(tmp_path):
    store = EventStore(tmp_path)
    _fill(store, "r", 10)
    store_id = store.store_id
    store.close()
    (tmp_path / "store.json").unlink()
    with pytest.raises(StoreError, match="store.json is missing.*10|--new-store-id"):
        EventStore(tmp_path)
    (tmp_path / "bus.json").write_text(f'{{"store_id": "{store_id}", "generation": 3}}')
    (tmp_path / "store.json").unlink(missing_ok=True)
    store = EventStore(tmp_path)
    assert store.store_id == store_id and store.generation == 4 and store.next_offset == 10
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
