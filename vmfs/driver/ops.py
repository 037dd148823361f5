"""One place per command: validate, confine, translate to Linux calls, turn results into statuses.

Each command is a generator. It validates its private copy of the parameters, then `yield`s call
tuples (see `vmfs.uring.perform`) and receives each call's result (>= 0 or a negated errno); it
ends by setting `req.status` and `req.data`. The engine decides whether a yielded call goes to
io_uring or runs at once, so each command is written once for both modes. Commands never touch
the queues.

What is yielded: every call that may wait on the disk for long — reads, writes, fsync,
ftruncate, opens, mkdir/unlink/rename, and the statx of STAT and FILE_SIZE. What is called
directly, on the driver thread, because io_uring on Linux 6.1 has no form for it or it cannot
wait on the disk: closing a descriptor, the confined O_PATH lookup of a parent or of STAT's
target (a dcache walk), fstat of a descriptor just opened, lseek(SEEK_END) for a transfer's
ordering claims, getdents64 for listings (vmfs.driver.dirops), mount and unmount.

The checks of the commands the native loop also serves (FILE_OPEN, FILE_CLOSE, STAT, FILE_READ,
FILE_WRITE, FILE_SIZE and the directory commands) are C functions both call (csrc/handles.c):
written once, in protocol order, returning the status to answer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from vmfs._native import ffi, lib
from vmfs.driver import paths
from vmfs.driver.dirops import DirectoryCommands
from vmfs.driver.handles import HandleTable, OpenFile
from vmfs.driver.native import DIR_MODE
from vmfs.driver.ordering import (
    NAMESPACE_READ,
    NAMESPACE_WRITE,
    READ,
    STAT_CLAIMS,
    WHOLE_FILE,
    WRITE,
    Claim,
    size_read,
    transfer_claims,
)
from vmfs.driver.paths import RESOLVE, PathRefused, status_of
from vmfs.driver.request import Request, Steps
from vmfs.shm import Share
from vmfs.uring import (
    AT_EMPTY_PATH,
    AT_REMOVEDIR,
    IORING_OP_FSYNC,
    IORING_OP_FTRUNCATE,
    IORING_OP_MKDIRAT,
    IORING_OP_OPENAT2,
    IORING_OP_READ,
    IORING_OP_RENAMEAT,
    IORING_OP_STATX,
    IORING_OP_UNLINKAT,
    IORING_OP_WRITE,
    MAX_IO,
    new_statx,
)
from vmfs.wire import MAX_FILE_OFFSET, Command, OpenFlags, Status

log = logging.getLogger("vmfs.driver.ops")

CREATE_FLAG = int(OpenFlags.CREATE)  # a plain int: IntFlag arithmetic is slow on the hot path


NAME_COMMANDS = frozenset(
    {Command.RENAME, Command.FILE_REMOVE, Command.DIR_CREATE, Command.DIR_REMOVE}
)
HANDLE_ONLY_COMMANDS = frozenset({Command.DIR_TELL, Command.DIR_CLOSE})
LISTING_COMMANDS = frozenset(  # they read the live directory (vmfs.driver.dirstream)
    {Command.DIR_OPEN, Command.DIR_REWIND, Command.DIR_READ, Command.DIR_SEEK}
)


class Operations(DirectoryCommands):
    """The 20 commands against one served root."""

    def __init__(
        self,
        share: Share,
        handles: HandleTable,
        root: Callable[[], int | None],
        initialise: Callable[[], Status],
        deinitialise: Callable[[], Status],
    ) -> None:
        self.share = share
        self.handles = handles
        self.native = handles.context
        self.native.attach_share(share)
        self.ctx = self.native.ctx
        self._params = ffi.new("uint64_t[6]")  # a command's parameters, as csrc/ reads them
        self._open_how = ffi.new("uint64_t[2]")  # FILE_OPEN's Linux flags and mode
        self._slot = ffi.new("int *")
        self._root = root
        self._initialise = initialise
        self._deinitialise = deinitialise
        self.opening = 0  # FILE_OPENs between their table check and taking their handle
        self.table: dict[int, Callable[[Request], Steps]] = {
            Command.INITIALISE: self.initialise,
            Command.DEINITIALISE: self.deinitialise,
            Command.FILE_OPEN: self.file_open,
            Command.FILE_CLOSE: self.file_close,
            Command.STAT: self.stat,
            Command.FILE_READ: self.file_read,
            Command.FILE_WRITE: self.file_write,
            Command.FILE_SIZE: self.file_size,
            Command.RENAME: self.rename,
            Command.FILE_REMOVE: self.file_remove,
            Command.FILE_TRUNCATE: self.file_truncate,
            Command.DIR_CREATE: self.dir_create,
            Command.DIR_REMOVE: self.dir_remove,
            Command.DIR_OPEN: self.dir_open,
            Command.DIR_CLOSE: self.dir_close,
            Command.FILE_SYNC: self.file_sync,
            Command.DIR_READ: self.dir_read,
            Command.DIR_SEEK: self.dir_seek,
            Command.DIR_TELL: self.dir_tell,
            Command.DIR_REWIND: self.dir_rewind,
        }

    def claims(self, req: Request) -> tuple[Claim, ...] | None:
        """What the command reads or writes, for ordering against in-flight requests.

        None means "everything": the request waits for the ring to drain (mount changes).
        An empty tuple means it touches nothing another request could observe.
        """
        cmd, p = req.cmd, req.params
        if cmd == Command.FILE_READ or cmd == Command.FILE_WRITE:
            entry = self.handles.file(p[0])
            if entry is None:
                return ()
            return self.transfer_claims(entry, p[1], p[3], cmd == Command.FILE_WRITE)
        if cmd == Command.FILE_SIZE:
            entry = self.handles.file(p[0])
            return () if entry is None else size_read(entry.key)
        if cmd in (Command.FILE_SYNC, Command.FILE_TRUNCATE, Command.FILE_CLOSE):
            entry = self.handles.file(p[0])
            if entry is None:
                return ()
            writes = cmd == Command.FILE_TRUNCATE or cmd == Command.FILE_CLOSE
            return ((entry.key, 0, WHOLE_FILE, WRITE if writes else READ),)
        if cmd == Command.STAT:
            return STAT_CLAIMS
        if (cmd == Command.FILE_OPEN or cmd == Command.DIR_OPEN) and self._table_contended():
            return None
        if cmd == Command.FILE_OPEN:
            return NAMESPACE_WRITE if p[2] & CREATE_FLAG else NAMESPACE_READ
        if cmd in NAME_COMMANDS:
            return NAMESPACE_WRITE
        if cmd in HANDLE_ONLY_COMMANDS:
            return ()
        if cmd in LISTING_COMMANDS:
            return NAMESPACE_READ
        return None

    def transfer_claims(
        self, entry: OpenFile, position: int, length: int, writing: bool
    ) -> tuple[Claim, ...]:
        """A FILE_READ's or FILE_WRITE's claims, against the file's size as it is now.

        Only earlier commands have run or are in flight, and of those only a truncate or close
        can make the file shorter; both claim the whole file, so they conflict and the claims
        are taken again after the barrier. Otherwise the size at this command's turn is at
        least the size now: a range that ends within it neither depends on nor changes it.
        The size comes from lseek, a fraction of fstat's cost: every transfer names its
        offset, so a handle's file position is never used.
        """
        size = os.lseek(entry.fd, 0, os.SEEK_END)
        return transfer_claims(entry.key, position, length, writing, size)

    def _table_contended(self) -> bool:
        """Whether opens in flight could take the last free handles: a later open must then
        wait for them, or it could take a handle an earlier open is refused for."""
        return bool(self.opening) and len(self.handles) + self.opening >= self.handles.limit

    # -- helpers ------------------------------------------------------------------------------

    def _path(self, offset: int, size: int) -> bytes:
        return paths.from_buffer(self.share, offset, size)

    # -- mount state --------------------------------------------------------------------------

    def initialise(self, req: Request) -> Steps:
        req.finish(self._initialise())
        yield from ()

    def deinitialise(self, req: Request) -> Steps:
        req.finish(self._deinitialise())
        yield from ()

    # -- files --------------------------------------------------------------------------------

    def _c_params(self, params: tuple[int, ...]) -> Any:
        p = self._params
        for i, word in enumerate(params):
            p[i] = word
        return p

    def file_open(self, req: Request) -> Steps:
        """Checks, confinement and the handle are csrc/handles.c's (shared with the native
        loop); the open itself may go through io_uring."""
        root = self._root()
        root_fd = -1 if root is None else root
        path, how = self.native.path_buffer, self._open_how
        p = self._c_params(req.params)
        status = lib.vmfs_check_open(self.ctx, root_fd, p, path, how, how + 1)
        if status:
            req.finish(status)
            return
        relative, linux_flags, mode = ffi.string(path), how[0], how[1]
        flags, create = req.params[2], bool(req.params[2] & CREATE_FLAG)
        resolve = lib.vmfs_open_resolve(self.ctx, root_fd, relative)
        self.opening += 1
        try:
            fd = yield (IORING_OP_OPENAT2, root, relative, linux_flags, mode, resolve)
        finally:
            self.opening -= 1
        if fd < 0 and root is not None:
            fd = lib.vmfs_open_again(self.ctx, root, relative, linux_flags, mode, -fd)
        if fd < 0:
            req.finish(status_of(-fd, names_created=create))
            return
        handle = lib.vmfs_open_finish(self.ctx, fd, flags)
        if handle < 0:
            req.finish(-handle)
        else:
            req.finish(Status.SUCCESS, handle)

    def file_close(self, req: Request) -> Steps:
        """Performed at once (close cannot wait on the disk), by the native loop's own code."""
        req.finish(lib.vmfs_close_handle(self.ctx, req.params[0], lib.VMFS_KIND_FILE))
        yield from ()

    def _transfer_handle(self, req: Request, writing: bool) -> OpenFile | None:
        """FILE_READ/FILE_WRITE checks (csrc/handles.c); None (and the status set) if refused."""
        slot = self._slot
        status = lib.vmfs_check_transfer(self.ctx, self._c_params(req.params), writing, slot)
        if status:
            req.finish(status)
            return None
        entry = self.handles.file(req.params[0])
        assert entry is not None
        return entry

    def file_read(self, req: Request) -> Steps:
        _, position, buf_off, buf_size = req.params
        entry = self._transfer_handle(req, writing=False)
        if entry is None:
            return
        # No file extends past Linux's largest offset: that far is end of file, not an error.
        buf_size = min(buf_size, MAX_FILE_OFFSET - 1 - position)
        direct = self.share.direct
        target = self.share.window(buf_off, buf_size) if direct else bytearray(buf_size)
        view = memoryview(target)
        done = 0
        while done < buf_size:
            chunk = view[done : done + MAX_IO]
            res = yield (IORING_OP_READ, entry.fd, chunk, position + done)
            if res < 0:
                if done == 0:
                    req.finish(status_of(-res))
                    return
                break
            if res == 0:
                break
            done += res
        if not direct and done:
            self.share.copy_out(buf_off, view[:done])
        req.finish(Status.SUCCESS, done)

    def file_write(self, req: Request) -> Steps:
        _, position, buf_off, buf_size = req.params
        entry = self._transfer_handle(req, writing=True)
        if entry is None:
            return
        if self.share.direct:
            view = self.share.window(buf_off, buf_size)
        else:
            view = memoryview(self.share.copy_in(buf_off, buf_size))
        done = 0
        while done < buf_size:
            res = yield (IORING_OP_WRITE, entry.fd, view[done : done + MAX_IO], position + done)
            if res <= 0:
                if done == 0:
                    req.finish(status_of(-res) if res < 0 else Status.ERROR)
                    return
                break
            done += res
        req.finish(Status.SUCCESS, done)

    def file_size(self, req: Request) -> Steps:
        entry = self.handles.file(req.params[0])
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        out = new_statx()
        res = yield (IORING_OP_STATX, entry.fd, b"", AT_EMPTY_PATH, out)
        if res < 0:
            req.finish(status_of(-res))
            return
        req.finish(Status.SUCCESS, out.stx_size)

    def file_truncate(self, req: Request) -> Steps:
        handle, length = req.params
        entry = self.handles.file(handle)
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        if not entry.writable:
            req.finish(Status.INVALID_WRITE)
            return
        if length >= MAX_FILE_OFFSET:
            req.finish(Status.ERROR)
            return
        res = yield (IORING_OP_FTRUNCATE, entry.fd, length)
        req.finish(Status.SUCCESS if res >= 0 else status_of(-res))

    def file_sync(self, req: Request) -> Steps:
        entry = self.handles.file(req.params[0])
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        res = yield (IORING_OP_FSYNC, entry.fd)
        req.finish(Status.SUCCESS if res >= 0 else status_of(-res))

    def stat(self, req: Request) -> Steps:
        root = self._root()
        path = self.native.path_buffer
        status = lib.vmfs_check_stat(self.ctx, self._c_params(req.params), path)
        if status:
            req.finish(status)
            return
        out = new_statx()
        fd = paths.openat2_sync(root, ffi.string(path), os.O_PATH | os.O_CLOEXEC, 0, RESOLVE)
        if fd < 0:
            req.finish(status_of(-fd))
            return
        try:
            res = yield (IORING_OP_STATX, fd, b"", AT_EMPTY_PATH, out)
        finally:
            os.close(fd)
        if res < 0:
            req.finish(status_of(-res))
            return
        lib.vmfs_stat_out(self.ctx, req.params[2], out)
        req.finish(Status.SUCCESS)

    # -- names --------------------------------------------------------------------------------

    def _parent(self, relative: bytes, on_root: Status) -> tuple[int, bytes]:
        """(O_PATH descriptor of the parent, final name) of `relative`, resolved inside the
        root; the caller closes the descriptor. Raises PathRefused with the status to answer:
        `on_root` when the path names the root itself, else the failed lookup's."""
        parent, name = paths.split(relative)
        if not name or (name == b".." and paths.resolves_to_root(self._root(), relative)):
            raise PathRefused(on_root)
        fd = paths.open_parent(self._root(), parent)
        if fd < 0:
            raise PathRefused(status_of(-fd))
        return fd, name

    def _name_op(self, req: Request, on_root: Status, make_call: Any, names: bool) -> Steps:
        relative = self._path(req.params[0], req.params[1])
        fd, name = self._parent(relative, on_root)
        try:
            res = yield make_call(fd, name)
        finally:
            os.close(fd)
        req.finish(Status.SUCCESS if res >= 0 else status_of(-res, names_created=names))

    def dir_create(self, req: Request) -> Steps:
        yield from self._name_op(
            req,
            Status.ALREADY_EXISTS,
            lambda fd, name: (IORING_OP_MKDIRAT, fd, name, DIR_MODE),
            names=True,
        )

    def dir_remove(self, req: Request) -> Steps:
        yield from self._name_op(
            req,
            Status.SERVER_WAS_DENIED,
            lambda fd, name: (IORING_OP_UNLINKAT, fd, name, AT_REMOVEDIR),
            names=False,
        )

    def file_remove(self, req: Request) -> Steps:
        yield from self._name_op(
            req,
            Status.SERVER_WAS_DENIED,
            lambda fd, name: (IORING_OP_UNLINKAT, fd, name, 0),
            names=False,
        )

    def rename(self, req: Request) -> Steps:
        old_off, old_size, new_off, new_size = req.params
        old = self._path(old_off, old_size)
        new = self._path(new_off, new_size)
        source_fd, source_name = self._parent(old, Status.SERVER_WAS_DENIED)
        try:
            target_fd, target_name = self._parent(new, Status.SERVER_WAS_DENIED)
        except PathRefused:
            os.close(source_fd)
            raise
        try:
            res = yield (IORING_OP_RENAMEAT, source_fd, source_name, target_fd, target_name)
        finally:
            os.close(source_fd)
            os.close(target_fd)
        req.finish(Status.SUCCESS if res >= 0 else status_of(-res, names_created=True))
