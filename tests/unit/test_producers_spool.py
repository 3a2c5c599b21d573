"""The on-disk spool: records come back in order, bounded in bytes, and damage on disk is detected and counted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from producers.errors import SpoolLockedError
from producers.spool import MAGIC, Spool, record_size


def _records(n: int, start: int = 0, size: int = 20) -> list[tuple[bytes, bytes]]:
    return [(f"r{i}".encode(), f"v{i}:".encode().ljust(size, b".")) for i in range(start, start + n)]


def _spool(path: Path, *, max_bytes: int = 1 << 20, segment_bytes: int = 1 << 16) -> Spool:
    spool = Spool(path, max_bytes=max_bytes, segment_bytes=segment_bytes)
    spool.open()
    return spool


def _read_all(spool: Spool) -> list[tuple[bytes, bytes]]:
    spool.seal()
    return [r for seg in spool.segments() for r in spool.read(seg).records]


def test_records_come_back_in_write_order_across_batches(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    assert spool.append(_records(5)) == 5
    assert spool.append(_records(5, start=5)) == 5
    assert spool.append([(b"", b"")]) == 1  # empty key and value are records too
    spool.seal()
    (segment,) = spool.segments()
    contents = spool.read(segment)
    assert contents.records == [*_records(10), (b"", b"")]
    assert (contents.corrupt, contents.torn, contents.written) == (0, 0, 11)


def test_constructor_touches_nothing(tmp_path: Path) -> None:
    Spool(tmp_path / "spool", max_bytes=1 << 20, segment_bytes=1 << 16)
    assert not (tmp_path / "spool").exists()


def test_one_fsync_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = _spool(tmp_path)
    spool.append(_records(1))  # creates the segment (its header and directory entry are fsync'd too)
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    assert spool.append(_records(500)) == 500
    assert len(calls) == 1


def test_segments_rotate_at_segment_bytes_and_replay_oldest_first(tmp_path: Path) -> None:
    spool = _spool(tmp_path, segment_bytes=200)
    records = _records(40)
    assert spool.append(records[:25]) == 25
    assert spool.append(records[25:]) == 15
    segments = spool.segments()
    assert len(segments) > 3
    assert segments == sorted(segments)
    assert all(p.stat().st_size <= 200 for p in tmp_path.glob("*.seg"))
    assert _read_all(spool) == records
    assert spool.bytes == sum(p.stat().st_size for p in tmp_path.glob("*.seg"))


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    spool = _spool(tmp_path, segment_bytes=64)
    big = [(b"k", b"x" * 500)]
    assert spool.append(_records(1) + big + _records(1, start=1)) == 3
    assert _read_all(spool) == _records(1) + big + _records(1, start=1)


def test_total_bytes_never_exceed_the_bound_and_the_overflow_is_reported(tmp_path: Path) -> None:
    max_bytes = 1000
    spool = _spool(tmp_path, max_bytes=max_bytes, segment_bytes=300)
    records = _records(100)
    written = spool.append(records)
    per_record = record_size(*records[0])
    assert 0 < written < 100
    assert spool.bytes <= max_bytes
    assert max_bytes - spool.bytes < len(MAGIC) + per_record  # it stopped because it is full, not earlier
    assert spool.append(records[written:]) == 0
    assert _read_all(spool) == records[:written]  # a prefix: order kept, nothing skipped
    oldest = spool.segments()[0]
    spool.delete(oldest)
    assert spool.append(records[written:]) > 0  # deleting a replayed segment makes room again


def test_a_corrupted_record_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    records = _records(5)
    spool.append(records)
    spool.seal()
    (segment,) = spool.segments()
    path = next(tmp_path.glob("*.seg"))
    data = bytearray(path.read_bytes())
    offset = len(MAGIC) + 2 * record_size(*records[0]) + 12  # inside the body of the third record
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    contents = spool.read(segment)
    assert contents.records == records[:2] + records[3:]
    assert (contents.corrupt, contents.torn) == (1, 0)


def test_a_record_torn_by_a_crash_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    records = _records(5)
    spool.append(records)
    spool.close()
    path = next(tmp_path.glob("*.seg"))
    with open(path, "r+b") as f:  # the crash: the last write reached the disk only in part
        f.truncate(path.stat().st_size - 7)
    reopened = _spool(tmp_path)
    (segment,) = reopened.segments()
    contents = reopened.read(segment)
    assert contents.records == records[:4]
    assert (contents.corrupt, contents.torn, contents.written) == (0, 1, None)


def test_a_segment_without_its_header_yields_nothing_and_counts_as_torn(tmp_path: Path) -> None:
    (tmp_path / "0000000000000001.seg").write_bytes(b"RWSP")
    (tmp_path / "0000000000000002.seg").write_bytes(b"")
    spool = _spool(tmp_path)
    first, second = (spool.read(s) for s in spool.segments())
    assert (first.records, first.torn) == ([], 1)
    assert (second.records, second.torn) == ([], 0)


def test_a_new_process_finds_the_segments_and_writes_after_them(tmp_path: Path) -> None:
    first = _spool(tmp_path, segment_bytes=200)
    first.append(_records(20))
    first.close()
    second = _spool(tmp_path, segment_bytes=200)
    old = second.segments()
    assert second.bytes == sum(p.stat().st_size for p in tmp_path.glob("*.seg"))
    second.append(_records(3, start=20))
    second.seal()
    new = [s for s in second.segments() if s not in old]
    assert new and min(new) > max(old)
    assert _read_all(second) == _records(23)


def test_segment_order_is_numeric_not_lexical(tmp_path: Path) -> None:
    spool = _spool(tmp_path, segment_bytes=len(MAGIC) + record_size(*_records(1)[0]))
    spool.append(_records(12))  # one record per segment: segments 1..12
    assert _read_all(spool) == _records(12)


def test_two_processes_cannot_share_a_spool(tmp_path: Path) -> None:
    first = _spool(tmp_path)
    with pytest.raises(SpoolLockedError) as info:
        _spool(tmp_path)
    assert info.value.path == tmp_path
    first.close()
    _spool(tmp_path).close()  # released on close
