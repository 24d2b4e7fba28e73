"""A write-ahead journal for the primary file site: a durable acknowledgement for the price of
one device flush instead of a file creation.

Why it exists: making a *new* file durable (write, fdatasync, fsync of its directory) costs a
filesystem-journal commit for the inode, its blocks and the directory entry, while
overwriting blocks of a file that is already fully allocated and calling fdatasync only
writes the data and flushes the device cache. So an object being ingested is appended to a
preallocated segment file and flushed (group commit: one fdatasync covers every append made before it), and only
then acknowledged; its own file under ``objects/`` is written afterwards, in the background,
and hardened in bulk by the site's ``flush`` before the record is released.

On disk (``journal/seg-NNNN``, ``SEGMENT_SIZE`` bytes each, zero-filled when created):

- a segment header (``DVJS``, format, epoch, CRC-32) in the first ``HEADER_SIZE`` bytes;
- records from there on: ``DVJR`` (``DEAD`` once released), epoch, data length, name length,
  CRC-32 of epoch + lengths + name, then the name and the sealed object's bytes.

A reused segment gets a new epoch, so records of its previous life end the scan. A record's
header is checked by its CRC; its data is a sealed object, authenticated (AES-GCM) by the
caller before it is re-indexed, so a record torn by a crash (never acknowledged: the flush did
not return) fails that check and is discarded. Appends are written in order under one lock,
so every record a flush covers lies before the next record's header: a torn record can only
be the last ones, which nobody was told were stored.

One process at a time owns a journal (``flock`` on ``journal/lock``); another process writing
to the same site (``import`` while ``serve`` runs) falls back to the site's intent files.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEGMENT_SIZE = 32 * 1024 * 1024
HEADER_SIZE = 4096
MAX_SEGMENTS = 8  # 256 MiB of preallocated journal at most; beyond, objects take the intent path
SEGMENT_MAGIC = b"DVJS"
LIVE = b"DVJR"
DEAD = b"DEAD"
_SEGMENT_HEADER = struct.Struct("<4sIII")  # magic, format, epoch, crc32(format, epoch)
_RECORD = struct.Struct("<4sIQHHI")  # magic, epoch, data length, name length, reserved, crc32
_ZEROS = bytes(1024 * 1024)


class JournalUnavailable(Exception):
    """The journal cannot be used here (owned by another process, or no room to create it)."""


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int
    index: int
    epoch: int = 0
    end: int = HEADER_SIZE  # where the next record goes
    live: int = 0  # records not yet released
    usable: bool = True  # the expected size: it may be reused


@dataclass(frozen=True, eq=False)
class Ticket:
    """Where one record lies; handed back to ``release`` once its object is hardened."""

    segment: Segment
    offset: int


@dataclass
class Recovered:
    name: str
    data: bytes
    ticket: Ticket


def _record_crc(epoch: int, data_length: int, name: bytes) -> int:
    return zlib.crc32(struct.pack("<IQH", epoch, data_length, len(name)) + name)


def _segment_crc(epoch: int) -> int:
    return zlib.crc32(struct.pack("<II", 1, epoch))


def scan(fd: int, epoch: int, size: int) -> list[tuple[int, bool, str, int, int]]:
    """Records of the segment's current epoch: (offset, live, name, data offset, data length)."""
    found = []
    offset = HEADER_SIZE
    while offset + _RECORD.size <= size:
        raw = os.pread(fd, _RECORD.size, offset)
        magic, rec_epoch, length, name_length, _reserved, crc = _RECORD.unpack(raw)
        if magic not in (LIVE, DEAD) or rec_epoch != epoch:
            break
        name_bytes = os.pread(fd, name_length, offset + _RECORD.size)
        end = offset + _RECORD.size + name_length + length
        if crc != _record_crc(rec_epoch, length, name_bytes) or end > size:
            break
        found.append((offset, magic == LIVE, name_bytes.decode("ascii", "replace"), offset + _RECORD.size + name_length,
                      length))
        offset = _aligned(end)
    return found


def _aligned(offset: int) -> int:
    return (offset + 7) & ~7


def live_records(directory: Path) -> list[str]:
    """Names of the unreleased records in a journal directory, read without taking it over
    (for tests and diagnostics: what the site acknowledged and has not hardened yet)."""
    names = []
    for path in sorted(directory.glob("seg-*")):
        fd = os.open(path, os.O_RDONLY)
        try:
            epoch = _read_epoch(fd)
            if epoch is not None:
                names += [name for _o, live, name, _d, _l in scan(fd, epoch, os.fstat(fd).st_size) if live]
        finally:
            os.close(fd)
    return names


def _read_epoch(fd: int) -> int | None:
    magic, version, epoch, crc = _SEGMENT_HEADER.unpack(os.pread(fd, _SEGMENT_HEADER.size, 0))
    if magic != SEGMENT_MAGIC or version != 1 or crc != _segment_crc(epoch):
        return None
    return epoch


class Journal:
    def __init__(self, directory: Path, segment_size: int = SEGMENT_SIZE, max_segments: int = MAX_SEGMENTS) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.max_segments = max_segments
        self._lock = threading.Lock()  # appends, rotation, release bookkeeping
        self._sync_lock = threading.Lock()  # one fdatasync at a time (group commit)
        self._written = 0  # sequence number of the last record written
        self._synced = 0  # ... and of the last one a completed fdatasync covers
        self._segments: list[Segment] = []
        self._active: Segment | None = None
        self._recovered: list[Recovered] = []
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalUnavailable(f"cannot open {directory}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise JournalUnavailable(f"{directory} is in use by another process") from exc
        try:
            self._load()
            with self._lock:
                self._activate()
        except OSError as exc:
            self.close()
            raise JournalUnavailable(f"cannot prepare {directory}: {exc.strerror}") from exc

    # --- opening ------------------------------------------------------------------------

    def _load(self) -> None:
        """Open the segments left by earlier runs; keep their live records for ``recovered``."""
        for path in sorted(self.directory.glob("seg-*")):
            if path.suffix == ".new":  # a creation cut short by a crash
                path.unlink(missing_ok=True)
                continue
            try:
                index = int(path.name[4:])
            except ValueError:
                continue
            fd = os.open(path, os.O_RDWR)
            size = os.fstat(fd).st_size
            epoch = _read_epoch(fd)
            segment = Segment(path, fd, index, epoch or 0, usable=size == self.segment_size)
            if epoch is not None and size == self.segment_size:
                for offset, live, name, data_offset, length in scan(fd, epoch, size):
                    if live:
                        segment.live += 1
                        self._recovered.append(Recovered(name, os.pread(fd, length, data_offset), Ticket(segment, offset)))
            self._segments.append(segment)

    def recovered(self) -> list[Recovered]:
        """Unreleased records of earlier runs (acknowledged, perhaps not hardened), in segment
        file order; the caller re-creates their objects and releases them."""
        found, self._recovered = self._recovered, []
        return found

    # --- segments -----------------------------------------------------------------------

    def _create(self) -> Segment:
        index = max((s.index for s in self._segments), default=0) + 1
        path = self.directory / f"seg-{index:04d}"
        temp = path.with_name(path.name + ".new")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # Real zeros, not fallocate: writing into unwritten extents would be a metadata
            # change again, and cost the journal commit this file exists to avoid.
            for offset in range(0, self.segment_size, len(_ZEROS)):
                os.pwrite(fd, _ZEROS[: min(len(_ZEROS), self.segment_size - offset)], offset)
            os.fsync(fd)
            os.rename(temp, path)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        segment = Segment(path, fd, index, epoch=0)
        self._segments.append(segment)
        return segment

    def _activate(self) -> bool:
        """Make a free segment (no live record) the active one, with a new epoch. False when
        every segment holds live records and no more may be created."""
        candidate = next((s for s in self._segments if s.live == 0 and s.usable and s is not self._active), None)
        if candidate is None:
            if len(self._segments) >= self.max_segments:
                return False
            try:
                candidate = self._create()
            except OSError as exc:  # no room for another segment: objects take the intent path
                log.warning("cannot add an ingest journal segment in %s (%s)", self.directory, exc.strerror)
                return False
        candidate.epoch += 1
        os.pwrite(candidate.fd, _SEGMENT_HEADER.pack(SEGMENT_MAGIC, 1, candidate.epoch, _segment_crc(candidate.epoch)), 0)
        os.fdatasync(candidate.fd)
        candidate.end = HEADER_SIZE
        if self._active is not None:
            os.fdatasync(self._active.fd)  # its last records are covered before appends move on
            self._synced = self._written
        self._active = candidate
        return True

    # --- appending ----------------------------------------------------------------------

    def append(self, name: str, data: bytes) -> Ticket | None:
        """Append and make durable; None when the record does not fit (the caller takes its
        ordinary path). Raises OSError when the disk refuses."""
        encoded = name.encode("ascii")
        length = _RECORD.size + len(encoded) + len(data)
        if HEADER_SIZE + length > self.segment_size:
            return None
        with self._lock:
            active = self._active
            if active is None or active.end + length > self.segment_size:
                if not self._activate():
                    return None
                active = self._active
                assert active is not None
            offset = active.end
            header = _RECORD.pack(LIVE, active.epoch, len(data), len(encoded), 0,
                                  _record_crc(active.epoch, len(data), encoded))
            written = os.pwritev(active.fd, [header, encoded, data], offset)
            if written != length:  # a short write into preallocated space: treat as a failure
                raise OSError(5, "short write to the ingest journal")
            active.end = _aligned(offset + length)
            active.live += 1
            self._written += 1
            sequence = self._written
        self._sync(sequence)
        return Ticket(active, offset)

    def _sync(self, sequence: int) -> None:
        with self._sync_lock:
            if self._synced >= sequence:
                return  # another thread's flush already covered this record
            with self._lock:
                target, fd = self._written, self._active.fd if self._active else -1
            os.fdatasync(fd)
            self._synced = max(self._synced, target)

    # --- releasing ----------------------------------------------------------------------

    def release(self, ticket: Ticket) -> None:
        """The record's object is hardened elsewhere: mark it dead (no flush needed: after a
        crash a live-looking released record is only checked again), free its segment when
        it was the last."""
        segment = ticket.segment
        with self._lock:
            if segment.fd < 0:
                return
            try:
                os.pwrite(segment.fd, DEAD, ticket.offset)
            except OSError:
                pass
            segment.live = max(0, segment.live - 1)

    def pending(self) -> int:
        with self._lock:
            return sum(s.live for s in self._segments)

    def close(self) -> None:
        with self._lock:
            for segment in self._segments:
                if segment.fd >= 0:
                    os.close(segment.fd)
                    segment.fd = -1
            self._segments.clear()
            self._active = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1




def held_elsewhere(directory: Path) -> bool:
    """Whether another process owns this journal right now (an ingesting ``serve``): its flock,
    which the kernel drops when that process dies."""
    try:
        fd = os.open(directory / "lock", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
