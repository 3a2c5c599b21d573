"""A bounded, append-only on-disk spool for events Kafka could not take, replayed oldest first.

Layout of the spool directory::

    <dir>/.lock                       flock'ed by the process using the spool
    <dir>/0000000000000001.seg        segments; a higher number is newer
    <dir>/0000000000000002.seg        the newest one may be the segment being written

A segment is the 8-byte magic ``RWSPOOL1`` followed by records::

    u32 LE  body length
    u32 LE  CRC-32 (zlib) of the body
    body:   u32 LE key length | key | value     (value = the serialized InferenceEvent)

Guarantees:

* :meth:`Spool.append` writes a batch with one ``write`` and one ``fsync`` per segment it touches; when it
  returns, the records are on disk. A new segment file is fsync'd together with its directory entry.
* The segment files together never exceed ``max_bytes``: ``append`` writes the longest prefix of the batch
  that fits and returns how many records that was; the caller counts the rest as dropped.
* Only sealed segments are read (:meth:`segments`); the segment being written is sealed by :meth:`seal`,
  by rotation at ``segment_bytes``, and by :meth:`close`. A restarted process finds every segment sealed.
* Reading never trusts the disk: a record whose CRC does not match is skipped and counted as ``corrupt``; a
  record cut short at the end of a file (a crash in the middle of a write) is counted as ``torn``, and so is
  everything after a length field that points past the end of the file.
* One process at a time: :meth:`open` takes an exclusive ``flock`` on ``.lock`` and raises
  :class:`~producers.errors.SpoolLockedError` if another process holds it.
* Segments are removed only by :meth:`delete`, which the logger calls once every record of the segment is
  delivered; a crash before that re-sends the segment (delivery is at least once).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from producers.errors import SpoolError, SpoolLockedError

MAGIC = b"RWSPOOL1"
_HEADER = struct.Struct("<II")  # body length, CRC-32 of the body
_KEY_LEN = struct.Struct("<I")
_SUFFIX = ".seg"

Record = tuple[bytes, bytes]
"""(key, value)"""


def encode_record(key: bytes, value: bytes) -> bytes:
    body = _KEY_LEN.pack(len(key)) + key + value
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def record_size(key: bytes, value: bytes) -> int:
    """Bytes a record takes in a segment file."""
    return _HEADER.size + _KEY_LEN.size + len(key) + len(value)


@dataclass(frozen=True)
class SegmentContents:
    """The readable records of one segment, in write order, and what could not be read."""

    segment: int
    records: list[Record]
    corrupt: int  # records skipped because their CRC did not match
    torn: int  # records lost at the end of the file (cut short, or behind an impossible length); 1 if unknown
    written: int | None  # records this process wrote to the segment; None for segments of an earlier process


class Spool:
    """Segment files under ``directory``; not thread-safe (one delivery thread owns it).

    The constructor does no I/O; :meth:`open` creates the directory, takes the lock and indexes the
    segments an earlier process left (their sizes only; records are read when they are replayed).
    """

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int) -> None:
        if segment_bytes <= len(MAGIC) or max_bytes < segment_bytes:
            raise ValueError(f"need max_bytes ({max_bytes}) >= segment_bytes ({segment_bytes}) > {len(MAGIC)}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._sizes: dict[int, int] = {}  # segment -> file size, for every segment on disk
        self._written: dict[int, int] = {}  # segment -> records written by this process
        self._active: int | None = None
        self._active_fd: int | None = None
        self._lock_fd: int | None = None
        self._next = 1
        self._bytes = 0

    # ------------------------------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolError(self.directory, f"cannot create: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise SpoolLockedError(self.directory, "locked by another process") from None
        self._lock_fd = lock_fd
        for path in self.directory.glob(f"*{_SUFFIX}"):
            if path.stem.isdigit():
                self._sizes[int(path.stem)] = path.stat().st_size
        self._bytes = sum(self._sizes.values())
        self._next = max(self._sizes, default=0) + 1

    def close(self) -> None:
        """Seal the active segment and release the lock. Idempotent."""
        self.seal()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -------------------------------------------------------------------------------------------- writing

    def append(self, records: Sequence[Record]) -> int:
        """Write the longest prefix of ``records`` that fits under ``max_bytes``; return its length.

        Raises SpoolError (with ``written``: how many records did reach the disk) on an I/O error; the
        segment being written is then sealed, so a torn record can only be the last one of its file.
        """
        done = 0
        while done < len(records):
            if self._active is not None and self._sizes[self._active] >= self.segment_bytes:
                self.seal()
            if self._active is None:
                if self._bytes + len(MAGIC) + record_size(*records[done]) > self.max_bytes:
                    break
                self._open_segment()
            seg = self._active_seg()
            room_in_segment = self.segment_bytes - self._sizes[seg]
            room_in_spool = self.max_bytes - self._bytes
            chunk: list[bytes] = []
            size = 0
            for key, value in records[done:]:
                n = record_size(key, value)
                # a record larger than a whole segment still gets one of its own
                if size + n > room_in_spool or (
                    size + n > room_in_segment and (chunk or self._sizes[seg] > len(MAGIC))
                ):
                    break
                chunk.append(encode_record(key, value))
                size += n
            if chunk:
                self._write(seg, b"".join(chunk), len(chunk), done)
                done += len(chunk)
            elif self._sizes[seg] == len(MAGIC):
                break  # not even an empty segment has room: the spool is full
            if done < len(records):
                self.seal()  # the next record goes to a new segment (or, if the spool is full, nowhere)
        return done

    def seal(self) -> None:
        """Close the segment being written (if any): it becomes readable by :meth:`segments`."""
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._active_fd = None
        self._active = None

    def _active_seg(self) -> int:
        assert self._active is not None
        return self._active

    def _open_segment(self) -> None:
        seg = self._next
        path = self._path(seg)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except OSError as exc:
            raise SpoolError(self.directory, f"cannot create segment {path.name}: {exc}") from exc
        self._next += 1
        self._active, self._active_fd = seg, fd
        self._sizes[seg] = 0
        self._written[seg] = 0
        try:
            self._write(seg, MAGIC, 0, 0)
            _fsync_dir(self.directory)
        except SpoolError:
            self.seal()
            raise

    def _write(self, seg: int, data: bytes, records: int, written_before: int) -> None:
        assert self._active_fd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._active_fd, view)
                self._sizes[seg] += n
                self._bytes += n
                view = view[n:]
            os.fsync(self._active_fd)
        except OSError as exc:
            self.seal()
            raise SpoolError(self.directory, f"write to segment {seg} failed: {exc}", written=written_before) from exc
        self._written[seg] += records

    # -------------------------------------------------------------------------------------------- reading

    def segments(self) -> list[int]:
        """Sealed segments, oldest first."""
        return sorted(s for s in self._sizes if s != self._active)

    def read(self, segment: int) -> SegmentContents:
        try:
            data = self._path(segment).read_bytes()
        except OSError as exc:
            raise SpoolError(self.directory, f"cannot read segment {segment}: {exc}") from exc
        records, corrupt, torn = _parse(data)
        return SegmentContents(segment, records, corrupt, torn, self._written.get(segment))

    def delete(self, segment: int) -> None:
        if segment == self._active:
            self.seal()
        with contextlib.suppress(FileNotFoundError):
            self._path(segment).unlink()
        self._bytes -= self._sizes.pop(segment, 0)
        self._written.pop(segment, None)

    # ---------------------------------------------------------------------------------------------- state

    @property
    def bytes(self) -> int:
        """Total size of the segment files."""
        return self._bytes

    @property
    def segment_count(self) -> int:
        return len(self._sizes)

    @property
    def active_records(self) -> int:
        """Records in the segment being written (0 when none is)."""
        return self._written.get(self._active, 0) if self._active is not None else 0

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:016d}{_SUFFIX}"


def _parse(data: bytes) -> tuple[list[Record], int, int]:
    if not data:
        return [], 0, 0  # a crash right after creating the file
    if data[: len(MAGIC)] != MAGIC:
        return [], 0, 1  # not a segment (or its header is torn): nothing in it can be trusted
    records: list[Record] = []
    corrupt = torn = 0
    view = memoryview(data)
    pos, end = len(MAGIC), len(data)
    while pos < end:
        if end - pos < _HEADER.size:
            torn += 1
            break
        length, crc = _HEADER.unpack_from(view, pos)
        body_end = pos + _HEADER.size + length
        if length < _KEY_LEN.size or body_end > end:
            torn += 1
            break
        body = view[pos + _HEADER.size : body_end]
        pos = body_end
        if zlib.crc32(body) != crc:
            corrupt += 1
            continue
        (key_len,) = _KEY_LEN.unpack_from(body)
        if _KEY_LEN.size + key_len > length:
            corrupt += 1
            continue
        records.append((bytes(body[_KEY_LEN.size : _KEY_LEN.size + key_len]), bytes(body[_KEY_LEN.size + key_len :])))
    return records, corrupt, torn


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise SpoolError(directory, f"fsync of the directory failed: {exc}") from exc
    finally:
        os.close(fd)
