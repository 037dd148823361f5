"""Crash-safe bookkeeping: which command is running, which completions were written.

A small memory-mapped file (kept on tmpfs or beside the loopback files) with one entry per
command-queue slot. A restarted driver reads it to answer an interrupted command with ERROR
instead of running it again (a poison command cannot crash-loop the driver), to re-publish a
completion that was written but not published, and to skip commands already answered. The
header also persists the "initialised" flag of directory mode (docs/protocol.md "Restarts").
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from vmfs.errors import VmfsError
from vmfs.wire import QUEUE_CAPACITY, U64_MASK

MAGIC = b"VMFSJRN1"
HEADER = struct.Struct("<8sQ16sQ")  # magic, initialised, connection identity, reserved
ENTRY = struct.Struct("<QQQQQ")  # command index + 1, phase, status, data, completion index
HEADER_SIZE = 64
ENTRY_SIZE = ENTRY.size
SIZE = HEADER_SIZE + QUEUE_CAPACITY * ENTRY.size
STARTED = 1
WRITTEN = 2


@dataclass(frozen=True)
class Entry:
    index: int
    phase: int
    status: int
    data: int
    completion_index: int


class Journal:
    """Per-slot phase records for the commands between the published head and the tail."""

    def __init__(self, path: str | os.PathLike[str], identity: bytes) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise VmfsError(
                f"cannot open the restart journal {self.path}: {e.strerror} "
                "(--state-dir DIR keeps it in a writable directory)"
            ) from e
        try:
            _lock(fd, self.path)
            if os.fstat(fd).st_size != SIZE:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # holds the lock while this driver lives
        identity = identity[:16].ljust(16, b"\0")
        magic, _, stored_identity, _ = HEADER.unpack_from(self._map, 0)
        self.fresh = magic != MAGIC or stored_identity != identity
        if self.fresh:
            self._map[:] = bytes(SIZE)
            HEADER.pack_into(self._map, 0, MAGIC, 0, identity, 0)
        self._pack = ENTRY.pack_into

    @property
    def mapping(self) -> mmap.mmap:
        """The journal's memory, for the native loop's journal writes (vmfs.driver.native)."""
        return self._map

    @property
    def initialised(self) -> bool:
        return HEADER.unpack_from(self._map, 0)[1] == 1

    @initialised.setter
    def initialised(self, value: bool) -> None:
        struct.pack_into("<Q", self._map, 8, 1 if value else 0)

    def started(self, index: int) -> None:
        offset = HEADER_SIZE + (index % QUEUE_CAPACITY) * ENTRY_SIZE  # _offset, inlined: hot
        self._pack(self._map, offset, (index + 1) & U64_MASK, STARTED, 0, 0, 0)

    def written(self, index: int, status: int, data: int, completion_index: int) -> None:
        self._pack(
            self._map,
            HEADER_SIZE + (index % QUEUE_CAPACITY) * ENTRY_SIZE,
            (index + 1) & U64_MASK,
            WRITTEN,
            status,
            data,
            completion_index,
        )

    def entry(self, index: int) -> Entry | None:
        """The record for command `index`, if the slot's record is about that very index."""
        stored, phase, status, data, completion = ENTRY.unpack_from(self._map, _offset(index))
        if stored != (index + 1) & U64_MASK or phase not in (STARTED, WRITTEN):
            return None
        return Entry(index, phase, status, data, completion)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def _lock(fd: int, path: Path) -> None:
    """One driver per journal: a second one would answer the first one's commands again."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise VmfsError(
            f"another `vmfs serve` is using the restart journal {path}; stop that one first"
        ) from None


def _offset(index: int) -> int:
    return HEADER_SIZE + (index % QUEUE_CAPACITY) * ENTRY.size
