"""Client-visible handles: opaque, typed, generation-checked integers below 2^31.

A handle is `generation << SLOT_BITS | slot`. Freed slots go to the back of a FIFO, and each
reuse bumps the slot's generation, so a closed value comes back only after 2^19 reuses of the
same slot: a stale or forged value fails the lookup instead of reaching another file. Each
slot's first generation is random, so a driver restarted after a crash does not hand out the
values its previous life did (the client may still hold those).

The table itself lives in the native context (`vmfs.driver.native.Context`, csrc/handles.c), so the
native serve loop and the Python engine see one table; this class is Python's view of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmfs._native import lib
from vmfs.driver.dirstream import DirStream

if TYPE_CHECKING:
    from vmfs.driver.native import Context

_FILE = lib.VMFS_KIND_FILE
_DIRECTORY = lib.VMFS_KIND_DIR


@dataclass(slots=True)
class OpenFile:
    fd: int
    readable: bool
    writable: bool
    key: tuple[int, int]  # (st_dev, st_ino): the object whose data this handle reaches


@dataclass(slots=True)
class OpenDirectory:
    fd: int
    stream: DirStream  # the listing's position and its small read buffer (vmfs.driver.dirstream)


class HandleTable:
    """Bounded table of open files and directories, indexed by client handle."""

    def __init__(self, limit: int = 1024, context: Context | None = None) -> None:
        if context is None:
            from vmfs.driver.native import Context

            context = Context(limit)
        self.context = context
        self.ctx = context.ctx
        self.limit = self.ctx.handles.limit
        mask = self.ctx.handles.generation_mask
        # One getrandom for the whole table (a call per slot cost a system call each at start).
        words = memoryview(os.urandom(4 * self.limit)).cast("I")
        for slot in range(self.limit):
            self.ctx.handles.generation[slot] = words[slot] % mask + 1

    def __len__(self) -> int:
        return self.limit - self.ctx.handles.free_count

    def full(self) -> bool:
        return not self.ctx.handles.free_count

    def add(self, entry: OpenFile) -> int | None:
        """Store `entry`; its handle, or None when the table is full. (Directory handles are
        made by csrc/handles.c, vmfs_dir_open_handle, which also makes their listing.)"""
        dev, ino = entry.key
        handle = lib.vmfs_handle_add(
            self.ctx, _FILE, entry.fd, entry.readable, entry.writable, dev, ino
        )
        return None if handle < 0 else handle

    def _entry(self, handle: int, kind: int) -> OpenFile | OpenDirectory | None:
        if not 0 <= handle < 1 << 31:
            return None
        slot = lib.vmfs_handle_slot(self.ctx, handle, kind)
        if slot < 0:
            return None
        e = self.ctx.handles.entries[slot]
        if e.kind == _FILE:
            return OpenFile(e.fd, bool(e.readable), bool(e.writable), (e.dev, e.ino))
        return OpenDirectory(e.fd, DirStream(e.dir))

    def file(self, handle: int) -> OpenFile | None:
        entry = self._entry(handle, _FILE)
        return entry if type(entry) is OpenFile else None

    def directory(self, handle: int) -> OpenDirectory | None:
        entry = self._entry(handle, _DIRECTORY)
        return entry if type(entry) is OpenDirectory else None

    def close_all(self) -> int:
        """Close every descriptor and invalidate every handle; how many there were."""
        entries = self.ctx.handles.entries
        closed = 0
        for slot in range(self.limit):
            if entries[slot].kind:
                lib.vmfs_release_slot(self.ctx, slot)
                closed += 1
        return closed
