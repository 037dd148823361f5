"""Directories on a memory filesystem (tmpfs, ramfs), found wherever /tmp happens to be.

On a memory filesystem the driver takes lanes it never takes on a disk (writes done at once in
the fast lane, opens and namespace calls performed inline), so the tests of those lanes must run
there explicitly: a root under `tmp_path` is a disk on one machine and tmpfs on another.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MEMORY_FSTYPES = frozenset({"tmpfs", "ramfs"})
CANDIDATES = ("/dev/shm", "/run/shm", tempfile.gettempdir())


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """The type of the filesystem `path` lies on, read from /proc/self/mountinfo."""
    target = os.path.realpath(path)
    best, found = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):  # a later mount hides an earlier one
                best, found = mount_point, fields[fields.index("-") + 1]
    return found


def memory_directory() -> Path:
    """A writable directory on a memory filesystem; the test fails (not skips) without one."""
    for candidate in CANDIDATES:
        if (
            os.path.isdir(candidate)
            and os.access(candidate, os.W_OK)
            and filesystem_type(candidate) in MEMORY_FSTYPES
        ):
            return Path(candidate)
    pytest.fail(
        f"no writable tmpfs or ramfs among {', '.join(CANDIDATES)}: the memory-filesystem lanes "
        "cannot be tested (mount a tmpfs on /dev/shm)",
        pytrace=False,
    )


@contextmanager
def on_memory_filesystem(prefix: str = "vmfs-test-") -> Iterator[Path]:
    """A fresh directory on a memory filesystem, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=memory_directory()) as directory:
        yield Path(directory)
