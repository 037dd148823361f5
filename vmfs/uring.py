"""A small Pythonic io_uring: prep one operation per call, submit, reap, probe.

Built on the cffi binding in `vmfs._native` (liburing, API mode). Every prep tags the SQE with a
caller-chosen integer; `reap` hands back (tag, result) pairs, result being the syscall's return
value or a negated errno. Knows nothing of the FS protocol.
"""

from __future__ import annotations

import enum
import os
from typing import Any

from vmfs._native import ffi, lib

# io_uring opcodes the driver uses (kernel ABI numbers; liburing headers may predate some).
IORING_OP_FSYNC = 3
IORING_OP_READ = 22
IORING_OP_WRITE = 23
IORING_OP_OPENAT2 = 28
IORING_OP_CLOSE = 19
IORING_OP_STATX = 21
IORING_OP_RENAMEAT = 35
IORING_OP_UNLINKAT = 36
IORING_OP_MKDIRAT = 37
IORING_OP_FTRUNCATE = 55


class Op(enum.IntEnum):
    """Operations the ring can be asked to perform (the names used in logs and probes)."""

    READ = IORING_OP_READ
    WRITE = IORING_OP_WRITE
    OPENAT2 = IORING_OP_OPENAT2
    CLOSE = IORING_OP_CLOSE
    STATX = IORING_OP_STATX
    FSYNC = IORING_OP_FSYNC
    RENAMEAT = IORING_OP_RENAMEAT
    UNLINKAT = IORING_OP_UNLINKAT
    MKDIRAT = IORING_OP_MKDIRAT
    FTRUNCATE = IORING_OP_FTRUNCATE


RESOLVE_IN_ROOT = lib.RESOLVE_IN_ROOT
RESOLVE_NO_MAGICLINKS = lib.RESOLVE_NO_MAGICLINKS
RESOLVE_NO_SYMLINKS = lib.RESOLVE_NO_SYMLINKS
AT_EMPTY_PATH = lib.AT_EMPTY_PATH
AT_REMOVEDIR = lib.AT_REMOVEDIR
STATX_BASIC_STATS = lib.STATX_BASIC_STATS
MAX_IO = 0x7FFFF000  # Linux caps one read/write at this many bytes
DISABLE_ENV = "VMFS_NO_IO_URING"  # set: behave as if io_uring were blocked (tests the fallback)


class RingUnavailable(OSError):
    """io_uring cannot be set up here (old kernel, seccomp, io_uring_disabled)."""


def probe() -> frozenset[Op]:
    """Which of our operations this kernel's io_uring supports."""
    return frozenset(op for op in Op if lib.vmfs_opcode_supported(int(op)) == 1)


class Ring:
    """One io_uring instance with batch reaping.

    Buffers and paths handed to a prep must stay alive until their completion is reaped; the
    caller keeps them (the driver keeps them on the request).
    """

    def __init__(self, entries: int = 1024) -> None:
        if os.environ.get(DISABLE_ENV):
            raise RingUnavailable(38, f"io_uring disabled by {DISABLE_ENV}")  # ENOSYS
        self._ring = ffi.new("struct io_uring *")
        # Not COOP_TASKRUN: completions that finish in task work must interrupt the driver's
        # sleep on the doorbell and the ring's eventfd, or they would wait for the next command.
        flags = lib.IORING_SETUP_SINGLE_ISSUER
        ret = lib.vmfs_ring_init(self._ring, entries, flags)
        if ret == -22:  # EINVAL: kernel predates the flags; plain ring
            ret = lib.vmfs_ring_init(self._ring, entries, 0)
        if ret < 0:
            raise RingUnavailable(-ret, f"io_uring_queue_init: {os.strerror(-ret)}")
        self.entries = entries
        self._reap_max = entries * 2
        self._tags = ffi.new("uint64_t[]", self._reap_max)
        self._results = ffi.new("int32_t[]", self._reap_max)
        self._eventfd: int | None = None
        self.supported = probe()
        self._closed = False

    # -- prep: each returns False when the submission queue is full -------------------------

    def read(self, fd: int, buf: Any, n: int, offset: int, tag: int) -> bool:
        return self._took(lib.vmfs_prep_read(self._ring, fd, buf, n, offset, tag))

    def write(self, fd: int, buf: Any, n: int, offset: int, tag: int) -> bool:
        return self._took(lib.vmfs_prep_write(self._ring, fd, buf, n, offset, tag))

    def openat2(self, dirfd: int, path: Any, how: Any, tag: int) -> bool:
        return self._took(lib.vmfs_prep_openat2(self._ring, dirfd, path, how, tag))

    def close_fd(self, fd: int, tag: int) -> bool:
        return self._took(lib.vmfs_prep_close(self._ring, fd, tag))

    def statx(self, dirfd: int, path: Any, flags: int, out: Any, tag: int) -> bool:
        return self._took(
            lib.vmfs_prep_statx(self._ring, dirfd, path, flags, STATX_BASIC_STATS, out, tag)
        )

    def fsync(self, fd: int, tag: int) -> bool:
        return self._took(lib.vmfs_prep_fsync(self._ring, fd, tag))

    def ftruncate(self, fd: int, length: int, tag: int) -> bool:
        return self._took(lib.vmfs_prep_ftruncate(self._ring, fd, length, tag))

    def renameat(self, olddir: int, old: Any, newdir: int, new: Any, tag: int) -> bool:
        return self._took(lib.vmfs_prep_renameat(self._ring, olddir, old, newdir, new, tag))

    def unlinkat(self, dirfd: int, path: Any, flags: int, tag: int) -> bool:
        return self._took(lib.vmfs_prep_unlinkat(self._ring, dirfd, path, flags, tag))

    def mkdirat(self, dirfd: int, path: Any, mode: int, tag: int) -> bool:
        return self._took(lib.vmfs_prep_mkdirat(self._ring, dirfd, path, mode, tag))

    def submit_call(self, call: tuple[Any, ...], tag: int) -> Any:
        """Prep one call tuple (see `perform`); returns what must stay alive, or None if full."""
        op = call[0]
        if op == IORING_OP_READ or op == IORING_OP_WRITE:
            buf = ffi.from_buffer(call[2])
            prep = self.read if op == IORING_OP_READ else self.write
            return buf if prep(call[1], buf, len(call[2]), call[3], tag) else None
        if op == IORING_OP_OPENAT2:
            path = ffi.new("char[]", call[2])
            how = new_open_how(call[3], call[4], call[5])
            return (path, how) if self.openat2(call[1], path, how, tag) else None
        if op == IORING_OP_STATX:
            path = ffi.new("char[]", call[2])
            return path if self.statx(call[1], path, call[3], call[4], tag) else None
        if op == IORING_OP_CLOSE:
            return True if self.close_fd(call[1], tag) else None
        if op == IORING_OP_FSYNC:
            return True if self.fsync(call[1], tag) else None
        if op == IORING_OP_FTRUNCATE:
            return True if self.ftruncate(call[1], call[2], tag) else None
        if op == IORING_OP_RENAMEAT:
            old, new = ffi.new("char[]", call[2]), ffi.new("char[]", call[4])
            return (old, new) if self.renameat(call[1], old, call[3], new, tag) else None
        if op == IORING_OP_UNLINKAT:
            path = ffi.new("char[]", call[2])
            return path if self.unlinkat(call[1], path, call[3], tag) else None
        if op == IORING_OP_MKDIRAT:
            path = ffi.new("char[]", call[2])
            return path if self.mkdirat(call[1], path, call[3], tag) else None
        raise ValueError(f"unknown call {op!r}")

    def _took(self, ret: int) -> bool:
        return ret == 0

    # -- submit / reap ------------------------------------------------------------------------

    def submit(self) -> int:
        """Hand every prepared SQE to the kernel in one system call."""
        ret = lib.io_uring_submit(self._ring)
        if ret < 0 and ret not in (-4, -11, -16):  # EINTR, EAGAIN, EBUSY: try again later
            raise OSError(-ret, f"io_uring_submit: {os.strerror(-ret)}")
        return max(ret, 0)

    def wait(self, count: int = 1) -> None:
        """Block until at least `count` completions are available (submitting first)."""
        ret = lib.vmfs_wait(self._ring, count)
        if ret < 0 and ret not in (-4, -11, -62):  # EINTR, EAGAIN, ETIME
            raise OSError(-ret, f"io_uring_wait_cqes: {os.strerror(-ret)}")

    def reap(self) -> list[tuple[int, int]]:
        """Every completion available now, as (tag, result) pairs, marked seen."""
        n = lib.vmfs_reap(self._ring, self._tags, self._results, self._reap_max)
        tags, results = self._tags, self._results
        return [(tags[i], results[i]) for i in range(n)]

    @property
    def native_ring(self) -> Any:
        """The `struct io_uring *`, for C that submits and reaps on this ring itself while
        nothing of Python's is on it (the native serve loop)."""
        return self._ring

    def eventfd(self) -> int:
        """An eventfd that becomes readable when completions are posted (registered once)."""
        if self._eventfd is None:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            ret = lib.io_uring_register_eventfd(self._ring, fd)
            if ret < 0:
                os.close(fd)
                raise OSError(-ret, f"io_uring_register_eventfd: {os.strerror(-ret)}")
            self._eventfd = fd
        return self._eventfd

    def close(self) -> None:
        if not self._closed:
            lib.io_uring_queue_exit(self._ring)
            if self._eventfd is not None:
                os.close(self._eventfd)
            self._closed = True


def openat2_sync(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """openat2(2) now, returning the fd or a negated errno (no exception on the hot path)."""
    return lib.vmfs_openat2(dirfd, path, flags, mode, resolve)


def new_open_how(flags: int, mode: int, resolve: int) -> Any:
    how = ffi.new("struct open_how *")
    how.flags = flags
    how.mode = mode
    how.resolve = resolve
    return how


def new_statx() -> Any:
    return ffi.new("struct statx *")


def perform(call: tuple[Any, ...]) -> int:
    """Do one call tuple synchronously; the result as io_uring would report it.

    Call tuples: (READ, fd, view, offset), (WRITE, fd, view, offset), (OPENAT2, dirfd, path,
    flags, mode, resolve), (CLOSE, fd), (STATX, dirfd, path, flags, statx_out), (FSYNC, fd),
    (FTRUNCATE, fd, length), (RENAMEAT, olddir, old, newdir, new), (UNLINKAT, dirfd, name,
    flags), (MKDIRAT, dirfd, name, mode). Results are >= 0 or a negated errno.
    """
    op = call[0]
    try:
        if op == IORING_OP_READ:
            return os.preadv(call[1], [call[2]], call[3])
        if op == IORING_OP_WRITE:
            return os.pwrite(call[1], call[2], call[3])
        if op == IORING_OP_OPENAT2:
            return lib.vmfs_openat2(call[1], call[2], call[3], call[4], call[5])
        if op == IORING_OP_STATX:
            return lib.vmfs_statx(call[1], call[2], call[3], STATX_BASIC_STATS, call[4])
        if op == IORING_OP_CLOSE:
            os.close(call[1])
        elif op == IORING_OP_FSYNC:
            os.fsync(call[1])
        elif op == IORING_OP_FTRUNCATE:
            os.ftruncate(call[1], call[2])
        elif op == IORING_OP_RENAMEAT:
            os.rename(call[2], call[4], src_dir_fd=call[1], dst_dir_fd=call[3])
        elif op == IORING_OP_UNLINKAT:
            if call[3] & AT_REMOVEDIR:
                os.rmdir(call[2], dir_fd=call[1])
            else:
                os.unlink(call[2], dir_fd=call[1])
        elif op == IORING_OP_MKDIRAT:
            os.mkdir(call[2], call[3], dir_fd=call[1])
        else:
            raise ValueError(f"unknown call {op!r}")
    except OSError as e:
        return -(e.errno or 5)
    return 0
