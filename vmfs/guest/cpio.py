"""A reproducible newc cpio writer: the initrd's bytes depend only on its contents.

Entries are written in path order with fixed owners (root), mtime and inode numbers, so two builds
of the same tree give the same archive; GNU cpio would copy the build machine's mtimes, owners and
inode numbers. Device nodes (the initrd's /dev/console) need no root to create here.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a regular file, a symlink or a character device."""

    mode: int  # type and permission bits, e.g. stat.S_IFREG | 0o755
    data: bytes = b""  # file contents, or the symlink's target
    rdev: tuple[int, int] = (0, 0)


def directory(perm: int = 0o755) -> Entry:
    return Entry(stat.S_IFDIR | perm)


def file(data: bytes, perm: int = 0o644) -> Entry:
    return Entry(stat.S_IFREG | perm, data)


def symlink(target: str) -> Entry:
    return Entry(stat.S_IFLNK | 0o777, target.encode())


def chardev(major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes, mtime: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, len(entry.data), 0, 0, *entry.rdev,
              len(name) + 1, 0)  # fmt: skip
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def archive(entries: dict[str, Entry], mtime: int = 0) -> bytes:
    """The newc archive of `entries` (paths without a leading slash), parents first."""
    out = bytearray()
    for ino, path in enumerate(sorted(entries), start=1):
        entry = entries[path]
        name = path.encode()
        out += _header(ino, entry, name, mtime) + name + b"\0"
        out += _pad(110 + len(name) + 1)
        out += entry.data + _pad(len(entry.data))
    out += _header(0, Entry(0), TRAILER.encode(), 0) + TRAILER.encode() + b"\0"
    out += _pad(110 + len(TRAILER) + 1)
    return bytes(out)
