"""A directory listing as a stream: getdents64 one small chunk at a time, never the whole directory.

An open listing holds one fixed-size native record (`struct vmfs_dir`, csrc/dirs.c): an 8 KiB
getdents64 buffer and at most 256 remembered seek cookies, about 10 KiB whatever the directory's
size, so the handle limit alone bounds what all listings take. getdents64 has no io_uring form
on the kernels served (Linux 6.1), so a chunk is read by a synchronous call on the driver
thread when the buffer runs dry: one call fills at most 8 KiB (a few hundred names), which is
bounded work, unlike reading the directory whole.

Entry numbers count the names returned since the listing started ("." and ".." are never
returned). DIR_SEEK to n goes back to the nearest remembered cookie at or before n and reads
forward; DIR_REWIND starts a fresh listing. What a client sees while the directory changes is
POSIX readdir's rule: a name present for the whole listing is returned exactly once; one added
or removed meanwhile may or may not be.
"""

from __future__ import annotations

from typing import Any

from vmfs._native import lib


class DirStream:
    """Python's view of one open listing; the record is owned by the handle table
    (csrc/handles.c), which frees it when the handle is closed."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state

    @property
    def position(self) -> int:
        """Entry number of the next name read (DIR_TELL)."""
        return int(self.state.index)

    def read_into(self, out: Any, device: bool) -> int:
        """Write the next name and a NUL at `out` (a `char *` with room for 256 bytes): the
        name's length, 0 at the end of the listing, or a negated errno."""
        return lib.vmfs_dir_read(self.state, out, device)

    def seek(self, entry: int) -> int:
        """Position before entry number `entry` (at the end if there are fewer): 0 or -errno."""
        return lib.vmfs_dir_seek(self.state, entry)

    def restart(self) -> int:
        """A fresh listing from the first name: 0 or -errno."""
        return lib.vmfs_dir_restart(self.state)
