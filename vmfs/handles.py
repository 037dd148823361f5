"""Client-visible handles: opaque, typed, generation-checked integers below 2^31.

A handle is `generation << SLOT_BITS | slot`. Freed slots go to the back of a FIFO, and each
reuse bumps the slot's generation, so a closed value comes back only after 2^19 reuses of the
same slot: a stale or forged value fails the lookup instead of reaching another file. Each
slot's first generation is random, so a driver restarted after a crash does not hand out the
values its previous life did (the client may still hold those).
"""

from __future__ import annotations

import enum
import os
import random
from collections import deque
from dataclasses import dataclass

from vmfs.dirstream import DirStream

SLOT_BITS = 12
MAX_SLOTS = 1 << SLOT_BITS
GENERATION_BITS = 31 - SLOT_BITS
GENERATION_MASK = (1 << GENERATION_BITS) - 1


_RANDOM = random.SystemRandom()


class Kind(enum.IntEnum):
    FILE = 1
    DIRECTORY = 2


@dataclass(slots=True)
class OpenFile:
    fd: int
    readable: bool
    writable: bool
    key: tuple[int, int]  # (st_dev, st_ino): the object whose data this handle reaches


@dataclass(slots=True)
class OpenDirectory:
    fd: int
    stream: DirStream  # the listing's position and its small read buffer (vmfs.dirstream)


class HandleTable:
    """Bounded table of open files and directories, indexed by client handle."""

    def __init__(self, limit: int = 1024) -> None:
        if not 1 <= limit <= MAX_SLOTS:
            raise ValueError(f"handle limit must be 1..{MAX_SLOTS}")
        self.limit = limit
        self._entries: list[OpenFile | OpenDirectory | None] = [None] * limit
        self._generation = [_RANDOM.randrange(1, GENERATION_MASK + 1) for _ in range(limit)]
        self._free: deque[int] = deque(range(limit))

    def __len__(self) -> int:
        return self.limit - len(self._free)

    def full(self) -> bool:
        return not self._free

    def add(self, entry: OpenFile | OpenDirectory) -> int | None:
        """Store `entry`; its handle, or None when the table is full."""
        if not self._free:
            return None
        slot = self._free.popleft()
        self._entries[slot] = entry
        return (self._generation[slot] << SLOT_BITS) | slot

    def _slot(self, handle: int) -> int | None:
        if handle >= 1 << 31:
            return None
        slot = handle & (MAX_SLOTS - 1)
        if slot >= self.limit or self._entries[slot] is None:
            return None
        if handle >> SLOT_BITS != self._generation[slot]:
            return None
        return slot

    def file(self, handle: int) -> OpenFile | None:
        slot = self._slot(handle)
        entry = None if slot is None else self._entries[slot]
        return entry if type(entry) is OpenFile else None

    def directory(self, handle: int) -> OpenDirectory | None:
        slot = self._slot(handle)
        entry = None if slot is None else self._entries[slot]
        return entry if type(entry) is OpenDirectory else None

    def remove(self, handle: int) -> OpenFile | OpenDirectory | None:
        """Forget `handle` (the caller closes the descriptor); None if it was not valid."""
        slot = self._slot(handle)
        if slot is None:
            return None
        entry = self._entries[slot]
        self._entries[slot] = None
        self._generation[slot] = (self._generation[slot] % GENERATION_MASK) + 1
        self._free.append(slot)
        return entry

    def close_all(self) -> int:
        """Close every descriptor and invalidate every handle; how many there were."""
        closed = 0
        for slot, entry in enumerate(self._entries):
            if entry is None:
                continue
            try:
                os.close(entry.fd)
            except OSError:
                pass
            self._entries[slot] = None
            self._generation[slot] = (self._generation[slot] % GENERATION_MASK) + 1
            self._free.append(slot)
            closed += 1
        return closed
