"""The directory-handle commands: DIR_OPEN, DIR_CLOSE, DIR_READ, DIR_SEEK, DIR_TELL, DIR_REWIND.

A listing is a snapshot taken at DIR_OPEN and DIR_REWIND, so entry numbers (DIR_TELL, DIR_SEEK)
stay stable in between; "." and ".." are never listed. All snapshots together are bounded.
Mixed into `vmfs.ops.Operations`, which supplies the share, the handles and path parsing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from vmfs import paths
from vmfs.handles import HandleTable, Listing, OpenDirectory
from vmfs.paths import RESOLVE, status_of
from vmfs.request import Request, Steps
from vmfs.shm import Share
from vmfs.wire import DIR_READ_MIN_BUFFER, Status

log = logging.getLogger("vmfs.ops")


class DirectoryCommands:
    share: Share
    handles: HandleTable
    _root: Callable[[], int | None]
    _path: Callable[[int, int], bytes]
    _buffer_ok: Callable[[int, int], bool]
    _issue_handle: Callable[[Request, OpenDirectory], None]

    # -- directories --------------------------------------------------------------------------

    def dir_open(self, req: Request) -> Steps:
        relative = self._path(req.params[0], req.params[1])
        if self.handles.full():
            req.finish(Status.TOO_MANY_OPEN_FILES)
            return
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK
        fd = paths.openat2_sync(self._root(), relative, flags, 0, RESOLVE)
        if fd < 0:
            req.finish(status_of(-fd))
            return
        names = list_names(fd, LISTING_BUDGET - self._listings_held())
        if names is None:
            os.close(fd)
            req.finish(Status.ALLOCATION_ERROR)
            return
        self._issue_handle(req, OpenDirectory(fd, names))
        yield from ()

    def _listings_held(self) -> int:
        return sum(entry.names.nbytes for entry in self.handles.directories())

    def dir_close(self, req: Request) -> Steps:
        entry = self.handles.directory(req.params[0])
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        self.handles.remove(req.params[0])
        os.close(entry.fd)
        req.finish(Status.SUCCESS)
        yield from ()

    def dir_read(self, req: Request) -> Steps:
        handle, buf_off, buf_size = req.params
        if not self._buffer_ok(buf_off, buf_size) or buf_size < DIR_READ_MIN_BUFFER:
            req.finish(Status.INVALID_BUFFER)
            return
        entry = self.handles.directory(handle)
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        if entry.position >= len(entry.names):
            req.finish(Status.END_OF_DIRECTORY)
            return
        name = entry.names[entry.position]
        entry.position += 1
        self.share.copy_out(buf_off, name + b"\0")
        req.finish(Status.SUCCESS, len(name))
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
        entry.position = min(location, len(entry.names))
        req.finish(Status.SUCCESS)
        yield from ()

    def dir_tell(self, req: Request) -> Steps:
        entry = self.handles.directory(req.params[0])
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        req.finish(Status.SUCCESS, entry.position)
        yield from ()

    def dir_rewind(self, req: Request) -> Steps:
        entry = self.handles.directory(req.params[0])
        if entry is None:
            req.finish(Status.INVALID_FD)
            return
        names = list_names(entry.fd, LISTING_BUDGET - self._listings_held() + entry.names.nbytes)
        if names is None:
            req.finish(Status.ALLOCATION_ERROR)
            return
        entry.names = names
        entry.position = 0
        req.finish(Status.SUCCESS)
        yield from ()


MAX_LISTING = 1 << 20
# What the snapshots of all open directory handles may take together. Without a bound, a client
# opening a huge directory over and over (or abandoning listings) exhausts the driver's memory.
LISTING_BUDGET = 64 << 20


def list_names(fd: int, budget: int = LISTING_BUDGET) -> Listing | None:
    """A snapshot of a directory's names (no "." or ".."), stable until the next rewind;
    None if it would take more than `budget` bytes."""
    names = Listing()
    chunk: list[bytes] = []
    with os.scandir(fd) as it:
        for entry in it:
            chunk.append(os.fsencode(entry.name))
            if len(chunk) < 512:
                continue
            names.extend(chunk)
            chunk.clear()
            if names.nbytes > budget:
                break
            if len(names) >= MAX_LISTING:
                log.warning("directory listing truncated at %d entries", MAX_LISTING)
                break
    names.extend(chunk)
    if names.nbytes > budget:
        log.warning("directory snapshots would exceed %d bytes; refusing", LISTING_BUDGET)
        return None
    return names
