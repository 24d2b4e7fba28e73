"""Where a data set arriving over DIMSE waits until its last fragment: bounded memory.

Without a bound, one association sending a 400 MiB instance held it whole in a growing
bytearray (then copied it), and a few such senders could exhaust the host. Here:

- ``InstanceBuffer`` holds one incoming data set: in memory up to ``spool_threshold`` bytes,
  beyond that in an unnamed temporary file inside the data directory (plaintext PHI on local
  disk, like the journal: never /tmp; created 0600 and unlinked from the start, so a crash
  leaves nothing behind). The finished data set is handed on as bytes, or as a read-only
  ``mmap`` of that file (bytes-like: slicing, ``find``, hashing and buffers all work), so the
  process does not hold a second anonymous copy while receiving it. A data set larger than
  ``max_bytes`` is refused: its remaining fragments are counted and dropped.
- ``MemoryBudget`` bounds what all associations hold in memory together (partial data sets
  in memory plus whole instances being ingested). When a reservation does not fit, the
  association waits, and so stops reading its socket (TCP backpressure to the sender),
  until an ingest finishes; it never fails the instance for it.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import tempfile
from pathlib import Path
from typing import IO, Union



class SpooledDataset(mmap.mmap):
    """A spooled data set, mapped read-only (bytes-like), with the file it maps."""

    _file: IO[bytes]
    _directory: Path | None

    def with_prefix(self, prefix: bytes) -> mmap.mmap:
        """The same bytes preceded by ``prefix`` (the Part-10 header), mapped from a second
        unnamed spool file filled by the kernel (copy_file_range), not through this process:
        wrapping a 400 MiB data set no longer makes a 400 MiB anonymous copy. Release the
        result with ``release``."""
        assert self._directory is not None
        target = _unnamed_file(self._directory)
        try:
            target.write(prefix)
            target.flush()
            source, sink, offset = self._file.fileno(), target.fileno(), 0
            while offset < len(self):
                try:
                    copied = os.copy_file_range(source, sink, len(self) - offset, offset, len(prefix) + offset)
                except OSError:  # a filesystem without it: through a bounded buffer instead
                    copied = os.pwrite(sink, self[offset:offset + (16 << 20)], len(prefix) + offset)
                if copied <= 0:
                    raise OSError(f"spool copy stopped at {offset} of {len(self)} bytes")
                offset += copied
            return mmap.mmap(sink, 0, access=mmap.ACCESS_READ)
        finally:
            target.close()

    def close(self) -> None:
        self._file.close()  # the map keeps its own reference to the file until it is closed
        super().close()


Dataset = Union[bytes, mmap.mmap]


def _unnamed_file(directory: Path) -> IO[bytes]:
    """A 0600 file in ``directory`` that is never visible there (Linux O_TMPFILE; elsewhere
    created and unlinked at once), so a crash leaves no plaintext behind."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=directory, prefix="dimse-")


class MemoryBudget:
    """Bytes of received DICOM data held in memory across all associations (event-loop only).

    A reservation is granted while the total stays within ``limit``, or when nothing at all
    is reserved (one instance larger than the whole budget still goes through, alone).
    Otherwise it waits, first come first served, so a large instance is not starved by a
    stream of small ones. Waiters hold no memory themselves (callers spool or release
    first), so waiting always ends once the current holders finish."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waits = 0  # how often a reservation had to wait (backpressure), for tests and logs
        self._queue: list[tuple[int, asyncio.Future[None]]] = []

    def available(self, size: int) -> bool:
        """Whether ``reserve(size)`` would be granted at once."""
        return not self._queue and self._fits(size)

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    def take(self, size: int) -> None:
        """Reserve without waiting (a holder that can neither spool nor wait)."""
        self.used += size

    async def reserve(self, size: int) -> None:
        if self.available(size):
            self.used += size
            return
        self.waits += 1
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((size, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(size)  # granted just as we were cancelled
            else:
                self._queue = [item for item in self._queue if item[1] is not granted]
                self._grant()
            raise

    def release(self, size: int) -> None:
        if size > 0:
            self.used = max(0, self.used - size)
            self._grant()

    def _grant(self) -> None:
        while self._queue and self._fits(self._queue[0][0]):
            size, granted = self._queue.pop(0)
            if not granted.done():  # a cancelled waiter is simply dropped
                self.used += size
                granted.set_result(None)


class InstanceBuffer:
    """One data set being received: memory first, then a spool file, or refused when too large.

    ``held`` is what it keeps in memory (the caller reserves it in the ``MemoryBudget``);
    ``size`` counts every byte received, kept or not."""

    def __init__(self, spool_dir: Path | None, spool_threshold: int, max_bytes: int) -> None:
        self.spool_dir = spool_dir
        self.spool_threshold = spool_threshold
        self.max_bytes = max_bytes
        self.size = 0
        self.refused = False
        self._memory = bytearray()
        self._file: IO[bytes] | None = None

    @property
    def held(self) -> int:
        return len(self._memory)

    @property
    def spooled(self) -> bool:
        return self._file is not None

    @property
    def can_spool(self) -> bool:
        return self.spool_dir is not None

    def over_limit(self, more: int) -> bool:
        return self.size + more > self.max_bytes

    def refuse(self) -> int:
        """Drop what was kept (the rest will be counted and discarded); returns the memory freed."""
        freed = self.held
        self.refused = True
        self._memory = bytearray()
        self._close_file()
        return freed

    def discard(self, fragment: bytes) -> None:
        self.size += len(fragment)

    def spill(self) -> int:
        """Move what is in memory to a new spool file; returns the memory freed."""
        assert self.spool_dir is not None and self._file is None
        self._file = _unnamed_file(self.spool_dir)
        freed = self.held
        self._file.write(self._memory)
        self._memory = bytearray()
        return freed

    def append(self, fragment: bytes) -> None:
        """Keep ``fragment``: into the spool file once there is one, else into memory."""
        self.size += len(fragment)
        if self._file is not None:
            self._file.write(fragment)
        else:
            self._memory += fragment

    def finish(self) -> Dataset:
        """The whole data set: bytes, or a ``SpooledDataset`` mapping the spool file (which it
        now owns: its space is freed once it is closed with ``release``)."""
        if self._file is None or self.size == 0:
            data = bytes(self._memory)
            self.close()
            return data
        self._file.flush()
        spooled = SpooledDataset(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        spooled._file, spooled._directory = self._file, self.spool_dir
        self._file = None
        return spooled

    def close(self) -> None:
        self._memory = bytearray()
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def release(dataset: Dataset | None) -> None:
    """Unmap a spooled data set (which frees its file's space); bytes need nothing."""
    if isinstance(dataset, mmap.mmap):
        try:
            dataset.close()
        except BufferError:  # a view of it is still alive somewhere: the GC unmaps it later
            pass
