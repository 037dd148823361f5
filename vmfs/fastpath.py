"""The per-request fast path: commands answered at once, without a generator or the ring.

Profiling the driver under load showed the time going to per-request Python machinery (the
generator, call tuples, ring prep and reap, claims) and to io_uring itself punting tmpfs reads
to worker threads, not to the reads. Two measures, both keeping `vmfs.ops` the one statement
of every command's semantics:

- `FastLane` answers the common, well-formed FILE_READ, FILE_WRITE, STAT and DIR_READ in one
  native call each. It only ever takes the success-shaped case (the end of a listing counts):
  anything unusual (a bad buffer or handle, an ordering conflict with in-flight work, an error,
  data not in the page cache) returns False and the command goes the ordinary way, which then
  decides its status.
- `Inline` lets the ordinary path perform a call synchronously when that cannot block on I/O
  (close, statx of an open file, an open whose lookup is in the dcache, anything on a memory
  filesystem) instead of through io_uring.

Both run a request to completion before the next one starts, after the same conflict check a
ring submission gets, so the ordering rule holds unchanged.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, Protocol

from vmfs import paths
from vmfs._native import ffi, lib
from vmfs.ops import Operations
from vmfs.ordering import NAMESPACE_READ, STAT_CLAIMS, InFlight
from vmfs.paths import RESOLVE, PathRefused
from vmfs.request import Request
from vmfs.uring import (
    IORING_OP_CLOSE,
    IORING_OP_FTRUNCATE,
    IORING_OP_MKDIRAT,
    IORING_OP_OPENAT2,
    IORING_OP_RENAMEAT,
    IORING_OP_STATX,
    IORING_OP_UNLINKAT,
    perform,
)
from vmfs.wire import DIR_READ_MIN_BUFFER, FAST_PARAMS, NUM_COMMANDS, STAT_SIZE, Command, Status

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
MEMORY_FILESYSTEMS = frozenset({TMPFS_MAGIC, RAMFS_MAGIC})
MAX_FILE_OFFSET = 1 << 63
BOUNCE_SIZE = 1 << 20  # larger bounced transfers take the ordinary path

# How a filesystem's file data is moved (learned per st_dev).
SYNC = 1  # a synchronous call: memory filesystems, or no ring at all
NOWAIT = 2  # try a synchronous RWF_NOWAIT read; data not cached goes to the ring
RING = 3  # always the ring

READ_PARAMS = FAST_PARAMS[Command.FILE_READ]
WRITE_PARAMS = FAST_PARAMS[Command.FILE_WRITE]
STAT_PARAMS = FAST_PARAMS[Command.STAT]
DIR_READ_PARAMS = FAST_PARAMS[Command.DIR_READ]
END_OF_DIRECTORY = int(Status.END_OF_DIRECTORY)
NAMESPACE_CALLS = frozenset(
    {IORING_OP_MKDIRAT, IORING_OP_UNLINKAT, IORING_OP_RENAMEAT, IORING_OP_FTRUNCATE}
)


class EngineLike(Protocol):
    """What the fast lane needs of `vmfs.fsm.Engine`."""

    in_flight: int
    ordering: InFlight
    journal: Any


Handler = Callable[[Request, Any, int], bool]


class FastLane:
    """Answers well-formed FILE_READ / FILE_WRITE / STAT / DIR_READ in one native call each."""

    def __init__(self, ops: Operations, ring_available: bool) -> None:
        self.ops = ops
        self.handles = ops.handles
        self.share = ops.share
        self.size = ops.share.size
        self.base = ffi.cast("char *", ffi.from_buffer(ops.share.view))
        self.direct = ops.share.direct
        self.bounce = None if self.direct else ffi.new("char[]", BOUNCE_SIZE)
        self.ring_available = ring_available
        self.modes: dict[int, int] = {}
        self.stat_out = ffi.new("uint64_t[17]")
        self.stat_bytes = ffi.buffer(self.stat_out)
        self.engine: EngineLike | None = None
        self.handlers: list[Handler | None] = [None] * NUM_COMMANDS
        self.handlers[Command.FILE_READ] = self.file_read
        self.handlers[Command.FILE_WRITE] = self.file_write
        self.handlers[Command.STAT] = self.stat
        self.handlers[Command.DIR_READ] = self.dir_read

    def attach(self, engine: EngineLike) -> None:
        self.engine = engine

    def mode(self, fd: int, dev: int) -> int:
        """How to move this filesystem's data, learned once per device."""
        mode = self.modes.get(dev)
        if mode is None:
            magic = lib.vmfs_fs_magic(fd)
            mode = SYNC if not self.ring_available or magic in MEMORY_FILESYSTEMS else NOWAIT
            self.modes[dev] = mode
        return mode

    def file_read(self, req: Request, message: Any, off: int) -> bool:
        handle, position, buf_off, size = params = READ_PARAMS.unpack_from(message, off + 16)
        if not 0 < size <= self.size - buf_off or buf_off >= self.size:
            return False
        entry = self.handles.file(handle)  # a live handle also means "initialised"
        if entry is None or not entry.readable or position >= MAX_FILE_OFFSET:
            return False
        engine = self.engine
        assert engine is not None
        key = entry.key
        if engine.ordering.file_writers and engine.ordering.conflicts(
            self.ops.transfer_claims(entry, position, size, writing=False)
        ):
            return False
        mode = self.modes.get(key[0]) or self.mode(entry.fd, key[0])
        if mode == RING:
            return False
        if not self.direct and size > BOUNCE_SIZE:
            return False
        req.params = params
        if engine.journal:
            engine.journal.started(req.index)
        flags = lib.RWF_NOWAIT if mode == NOWAIT else 0
        if self.direct:
            done = lib.vmfs_pread_full(entry.fd, self.base + buf_off, size, position, flags)
        else:
            done = lib.vmfs_pread_bounce(
                entry.fd, self.bounce, self.base + buf_off, size, position, flags
            )
        if done < 0:
            if done == -errno.EOPNOTSUPP and mode == NOWAIT:
                self.modes[key[0]] = RING
            return False
        req.status = 0
        req.data = done
        return True

    def file_write(self, req: Request, message: Any, off: int) -> bool:
        handle, position, buf_off, size = params = WRITE_PARAMS.unpack_from(message, off + 16)
        if not 0 < size <= self.size - buf_off or buf_off >= self.size:
            return False
        entry = self.handles.file(handle)
        if entry is None or not entry.writable or position >= MAX_FILE_OFFSET:
            return False
        key = entry.key
        if (self.modes.get(key[0]) or self.mode(entry.fd, key[0])) != SYNC:
            return False  # buffered writes may block: the ring does them
        if not self.direct and size > BOUNCE_SIZE:
            return False
        engine = self.engine
        assert engine is not None
        if engine.in_flight and engine.ordering.conflicts(
            self.ops.transfer_claims(entry, position, size, writing=True)
        ):
            return False
        req.params = params
        if engine.journal:
            engine.journal.started(req.index)
        if self.direct:
            done = lib.vmfs_pwrite_full(entry.fd, self.base + buf_off, size, position)
        else:
            done = lib.vmfs_pwrite_bounce(
                entry.fd, self.bounce, self.base + buf_off, size, position
            )
        if done < 0:
            return False  # nothing was written: the ordinary path runs it and picks the status
        req.status = 0
        req.data = done
        return True

    def stat(self, req: Request, message: Any, off: int) -> bool:
        path_off, path_size, buf_off, buf_size = params = STAT_PARAMS.unpack_from(message, off + 16)
        share_size = self.size
        if buf_size < STAT_SIZE or buf_off >= share_size or buf_size > share_size - buf_off:
            return False
        root = self.ops._root()
        if root is None:
            return False
        engine = self.engine
        assert engine is not None
        if engine.in_flight and engine.ordering.conflicts(STAT_CLAIMS):
            return False
        try:
            relative = paths.from_buffer(self.share, path_off, path_size)
        except PathRefused:
            return False
        req.params = params
        if engine.journal:
            engine.journal.started(req.index)
        if lib.vmfs_stat_record(root, relative, RESOLVE, self.stat_out) < 0:
            return False
        self.share.copy_out(buf_off, self.stat_bytes)
        req.status = 0
        req.data = 0
        return True

    def dir_read(self, req: Request, message: Any, off: int) -> bool:
        """The next name of a listing (`vmfs.dirstream`), read from the live directory: it
        waits (on the ordinary path) for namespace changes queued before it."""
        handle, buf_off, buf_size = params = DIR_READ_PARAMS.unpack_from(message, off + 16)
        if buf_size < DIR_READ_MIN_BUFFER or buf_off >= self.size or buf_size > self.size - buf_off:
            return False
        entry = self.handles.directory(handle)
        if entry is None:
            return False
        engine = self.engine
        assert engine is not None
        if engine.in_flight and engine.ordering.conflicts(NAMESPACE_READ):
            return False
        req.params = params
        if engine.journal:
            engine.journal.started(req.index)
        length = lib.vmfs_dir_read(entry.stream.state, self.base + buf_off, not self.direct)
        if length < 0:
            return False  # nothing consumed: the ordinary path tries again and picks the status
        req.status = 0 if length else END_OF_DIRECTORY
        req.data = length
        return True


class Inline:
    """For the ordinary path: perform a call now when it cannot block on I/O, else None."""

    def __init__(self, root: Callable[[], int | None]) -> None:
        self._root = root
        self._root_fd: int | None = None
        self._memory_root = False

    def memory_root(self) -> bool:
        fd = self._root()
        if fd != self._root_fd:
            self._root_fd = fd
            self._memory_root = fd is not None and lib.vmfs_fs_magic(fd) in MEMORY_FILESYSTEMS
        return self._memory_root

    def __call__(self, call: tuple[Any, ...]) -> int | None:
        op = call[0]
        if op == IORING_OP_CLOSE or op == IORING_OP_STATX:
            return perform(call)
        if op == IORING_OP_OPENAT2:
            if self.memory_root():
                return perform(call)
            if call[3] & os.O_CREAT:
                return None  # RESOLVE_CACHED refuses O_CREAT
            fd = lib.vmfs_openat2_once(
                call[1], call[2], call[3], call[4], call[5] | lib.RESOLVE_CACHED
            )
            return None if fd == -errno.EAGAIN else fd
        if op in NAMESPACE_CALLS and self.memory_root():
            return perform(call)
        return None
