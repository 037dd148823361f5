"""Shared-memory access: index words with ordering, and copies that are safe on device memory.

On real UIO the regions are device memory (uncached, Device-nGnRnE on arm64): unaligned or
multi-register accesses can fault, so every copy uses naturally aligned accesses, and index
words are single aligned 64-bit atomics with acquire/release ordering (docs/protocol.md "Queue
layout" and "Transports").
"""

from __future__ import annotations

from typing import Any

from vmfs._native import ffi, lib


class SharedIndexWords:
    """Index words in shared memory: single aligned 64-bit atomic accesses.

    docs/protocol.md "Queue layout" says how each side orders its loads and stores.
    """

    def __init__(self, region: memoryview) -> None:
        self._base = ffi.cast("char *", ffi.from_buffer(region))
        self._keep = region
        self._load = lib.vmfs_load_acquire
        self._store = lib.vmfs_store_release

    def load(self, offset: int) -> int:
        return self._load(self._base + offset)

    def store(self, offset: int, value: int) -> None:
        self._store(self._base + offset, value)


def copy_from_device(src: memoryview, n: int | None = None) -> bytearray:
    """Copy device memory into a new private buffer with aligned accesses only."""
    n = len(src) if n is None else n
    out = bytearray(n)
    if n:
        lib.vmfs_copy_aligned(ffi.from_buffer(out), ffi.from_buffer(src), n)
    return out


def copy_to_device(dst: memoryview, data: bytes | bytearray | memoryview) -> None:
    """Copy private bytes into device memory with aligned accesses only."""
    if len(data):
        lib.vmfs_copy_aligned(ffi.from_buffer(dst), ffi.from_buffer(data), len(data))


class Share:
    """The data region as the operations use it: copy in once, copy out, or lend to the kernel.

    On ordinary memory (`direct=True`) transfers may go straight between the kernel and the
    share; on device memory every byte is bounced with aligned copies (docs/protocol.md
    "Transports").
    """

    def __init__(self, view: memoryview, direct: bool) -> None:
        self.view = view
        self.size = len(view)
        self.direct = direct
        self.native: Any = None  # the vmfs.driver.native.Context that checks paths in this share

    def copy_in(self, offset: int, size: int) -> bytes:
        """The client's bytes at [offset, offset+size), copied out exactly once."""
        if self.direct:
            return bytes(self.view[offset : offset + size])
        return bytes(copy_from_device(self.view[offset : offset + size]))

    def copy_out(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.direct:
            self.view[offset : offset + len(data)] = data
        else:
            copy_to_device(self.view[offset : offset + len(data)], data)

    def window(self, offset: int, size: int) -> memoryview:
        """A view of the share for the kernel to read or fill (only when `direct`)."""
        return self.view[offset : offset + size]


class DeviceSlots:
    """Whole 64-byte queue slots copied between device memory and one private buffer.

    On device memory the driver must not let Python's struct module (memcpy underneath) touch
    the region: each command is copied out once with aligned word accesses and parsed from the
    copy, and each completion is built privately and copied in the same way.
    """

    SLOT = 64

    def __init__(self, region: memoryview) -> None:
        self._base = ffi.cast("char *", ffi.from_buffer(region))
        self._keep = region
        self.buffer = bytearray(self.SLOT)
        self._buffer = ffi.from_buffer(self.buffer)
        self._copy = lib.vmfs_copy_aligned

    def read(self, offset: int) -> bytearray:
        """The slot at `offset`, copied into the private buffer (valid until the next read)."""
        self._copy(self._buffer, self._base + offset, self.SLOT)
        return self.buffer

    def write(self, offset: int) -> None:
        """Copy the private buffer into the slot at `offset`."""
        self._copy(self._base + offset, self._buffer, self.SLOT)
