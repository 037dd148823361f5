"""The directory-handle commands: DIR_OPEN, DIR_CLOSE, DIR_READ, DIR_SEEK, DIR_TELL, DIR_REWIND.

DIR_OPEN opens the directory and reads nothing; DIR_READ takes names from the handle's
`vmfs.driver.dirstream.DirStream`, which reads the directory a small chunk at a time, so neither the
size of a directory nor the number of open listings makes a command stall or memory grow beyond
the handle limit's worth of small buffers. "." and ".." are never listed. Mixed into
`vmfs.driver.ops.Operations`, which supplies the share, the handles and path parsing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmfs._native import ffi, lib
from vmfs.driver import paths
from vmfs.driver.handles import HandleTable
from vmfs.driver.native import DIR_OPEN_FLAGS
from vmfs.driver.paths import RESOLVE, status_of
from vmfs.driver.request import Request, Steps
from vmfs.shm import Share
from vmfs.wire import DIR_READ_MIN_BUFFER, Status, buffer_ok


class DirectoryCommands:
    share: Share
    handles: HandleTable
    _root: Callable[[], int | None]
    _path: Callable[[int, int], bytes]
    _share_base: Any = None  # a `char *` to the share, made on first use

    def dir_open(self, req: Request) -> Steps:
        relative = self._path(req.params[0], req.params[1])
        if self.handles.full():
            req.finish(Status.TOO_MANY_OPEN_FILES)
            return
        fd = paths.openat2_sync(self._root(), relative, DIR_OPEN_FLAGS, 0, RESOLVE)
        if fd < 0:
            req.finish(status_of(-fd))
            return
        handle = lib.vmfs_dir_open_handle(self.handles.ctx, fd)  # closes fd if it fails
        if handle < 0:
            req.finish(-handle)
        else:
            req.finish(Status.SUCCESS, handle)
        yield from ()

    def dir_close(self, req: Request) -> Steps:
        req.finish(lib.vmfs_close_handle(self.handles.ctx, req.params[0], lib.VMFS_KIND_DIR))
        yield from ()

    def dir_read(self, req: Request) -> Steps:
        handle, buf_off, buf_size = req.params
        if not buffer_ok(buf_off, buf_size, self.share.size) or buf_size < DIR_READ_MIN_BUFFER:
            req.finish(Status.INVALID_BUFFER)
            return
        entry = self.handles.directory(handle)
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        if self._share_base is None:
            self._share_base = ffi.cast("char *", ffi.from_buffer(self.share.view))
        length = entry.stream.read_into(self._share_base + buf_off, not self.share.direct)
        if length > 0:
            req.finish(Status.SUCCESS, length)
        elif length == 0:
            req.finish(Status.END_OF_DIRECTORY)
        else:
            req.finish(Status.ERROR)  # getdents64 failed (an I/O error): the listing may go on
        yield from ()

    def dir_seek(self, req: Request) -> Steps:
        handle, location = req.params
        entry = self.handles.directory(handle)
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        if location < 0:
            req.finish(Status.ERROR)
            return
        err = entry.stream.seek(location)
        req.finish(Status.SUCCESS if err == 0 else Status.ERROR)
        yield from ()

    def dir_tell(self, req: Request) -> Steps:
        entry = self.handles.directory(req.params[0])
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        req.finish(Status.SUCCESS, entry.stream.position)
        yield from ()

    def dir_rewind(self, req: Request) -> Steps:
        entry = self.handles.directory(req.params[0])
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        err = entry.stream.restart()
        req.finish(Status.SUCCESS if err == 0 else Status.ERROR)
        yield from ()
