"""Client paths: parsing, chroot-like confined resolution, and errno → status translation.

Confinement is structural (virtiofsd's approach): every lookup starts at the served root's
descriptor and goes through openat2 with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, so `..`,
absolute paths and absolute or relative symlinks found on the disk all stay inside the root.
Operations on a final component (unlink, rmdir, mkdir, rename) act on a name relative to a
parent directory resolved that way, so a final symlink is never followed out.

FILE_OPEN first tries a path without a `..` component with RESOLVE_DESCENDING instead: a lookup
from the root that follows no symlink and never goes up cannot leave the root, and the kernel
skips the scoping work; a symlink on the way (ELOOP) sends it back to RESOLVE.
"""

from __future__ import annotations

import errno
import os

from vmfs._native import ffi, lib
from vmfs.shm import Share
from vmfs.uring import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2_sync
from vmfs.wire import U64_MASK, Status

RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
RESOLVE_DESCENDING = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
ROOT = b"."


class PathRefused(Exception):
    """A command's path is refused before any call: the one way a refusal leaves a helper,
    carrying the status to answer (INVALID_PATH for unusable bytes (docs/protocol.md "Paths"),
    or what resolving the path said)."""

    def __init__(self, status: Status = Status.INVALID_PATH) -> None:
        super().__init__(status.name)
        self.status = status


def from_buffer(share: Share, offset: int, size: int) -> bytes:
    """The root-relative path (for openat2; b"." for the root) in a client's path buffer.

    The one check of a path buffer (docs/protocol.md "Paths") for every command that takes a path
    (csrc/handles.c, vmfs_share_path, which the native loop uses too): a buffer that is invalid
    or longer than MAX_PATH_LENGTH bytes is refused whatever it holds, a NUL ends the path early,
    "." and empty components are dropped, an empty path or an over-long name is refused.
    """
    if share.native is None:
        raise RuntimeError("the share is not attached to a native context")
    out = share.native.path_buffer
    if not (0 <= offset <= U64_MASK and 0 <= size <= U64_MASK):
        raise PathRefused()
    n = lib.vmfs_share_path(share.native.ctx, offset, size, out)
    if n < 0:
        raise PathRefused()
    return ffi.unpack(out, n)


def split(relative: bytes) -> tuple[bytes, bytes]:
    """(parent, final name) of a parsed path; name is b"" for the root itself."""
    if relative == ROOT:
        return ROOT, b""
    parent, _, name = relative.rpartition(b"/")
    return parent or ROOT, name


def open_parent(root_fd: int, parent: bytes) -> int:
    """An O_PATH descriptor of `parent`, resolved inside the root, or a negated errno."""
    return openat2_sync(root_fd, parent, O_PATH_DIR, 0, RESOLVE)


def resolves_to_root(root_fd: int, relative: bytes) -> bool:
    """Whether a path like "a/.." names the served root itself (so it must not be removed)."""
    fd = openat2_sync(root_fd, relative, O_PATH_DIR, 0, RESOLVE)
    if fd < 0:
        return False
    try:
        st, root = os.fstat(fd), os.fstat(root_fd)
        return (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino)
    finally:
        os.close(fd)


_BASE = {
    errno.ENOENT: Status.NO_FILE,
    errno.ENOTDIR: Status.NOT_DIRECTORY,
    errno.EEXIST: Status.ALREADY_EXISTS,
    errno.ENOTEMPTY: Status.NOT_EMPTY,
    errno.EISDIR: Status.ERROR,
    errno.EACCES: Status.SERVER_WAS_DENIED,
    errno.EPERM: Status.SERVER_WAS_DENIED,
    errno.EROFS: Status.SERVER_WAS_DENIED,
    errno.ENOSPC: Status.DIRECTORY_IS_FULL,
    errno.EDQUOT: Status.DIRECTORY_IS_FULL,
    errno.EMLINK: Status.DIRECTORY_IS_FULL,
    errno.ENAMETOOLONG: Status.INVALID_PATH,
    errno.ELOOP: Status.INVALID_PATH,
    errno.EXDEV: Status.INVALID_PATH,
    errno.EINVAL: Status.ERROR,
    errno.EBADF: Status.INVALID_FD,
    errno.EMFILE: Status.TOO_MANY_OPEN_FILES,
    errno.ENFILE: Status.TOO_MANY_OPEN_FILES,
    errno.ENOMEM: Status.ALLOCATION_ERROR,
    errno.EFAULT: Status.INVALID_BUFFER,
}


def status_of(err: int, names_created: bool = False) -> Status:
    """The status for the failing operation's own errno (positive).

    The table is docs/protocol.md "From a Linux error to a status".

    `names_created`: the command creates or renames a name, where EINVAL means the filesystem
    rejected the name (INVALID_NAME); elsewhere EINVAL is ERROR.
    """
    if err == errno.EINVAL and names_created:
        return Status.INVALID_NAME
    return _BASE.get(err, Status.ERROR)
