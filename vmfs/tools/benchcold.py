"""The cold-cache workload of `vmfs bench`: random 4 KiB reads that each go to the disk.

Its root is an ext4 image on a disk filesystem (`--cold-dir`, /var/tmp by default: not tmpfs),
attached to a loop device with direct I/O (so the image file does not cache a second copy) and
mounted; the data file is written once with real data (not sparse). Before each run the page
cache is dropped and the file advised out of it, and the reads visit every block at most once,
in a shuffled order, so each one misses the cache: what counts is how many reads the driver keeps
in flight, the thing io_uring is for. Mounting and dropping caches need root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vmfs.driver.mount import Mounter, MountError, mount_entry
from vmfs.errors import VmfsError
from vmfs.tools.benchload import DATA_FILE, ensure_data_file

LOOP_SET_DIRECT_IO = 0x4C08
IMAGE = "cold.ext4"
DROP_CACHES = "/proc/sys/vm/drop_caches"


def cold_unavailable() -> str | None:
    """Why the workload cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (it mounts an ext4 image and drops the page cache); run bench as root"
    if not os.access(DROP_CACHES, os.W_OK):
        return f"cannot write {DROP_CACHES} (read-only here), so the cache cannot be dropped"
    if shutil.which("mkfs.ext4") is None:
        return "needs mkfs.ext4 (e2fsprogs)"
    return None


def _direct_io(mount_point: Path) -> bool:
    """Switch the loop device under `mount_point` to direct I/O; False if the kernel refuses."""
    entry = mount_entry(str(mount_point))
    if entry is None or not entry.source.startswith("/dev/loop"):
        return False
    fd = os.open(entry.source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_SET_DIRECT_IO, 1)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def cold_root(parent: Path, file_size: int) -> Iterator[Path]:
    """A mounted ext4 image under `parent` holding the data file; gone afterwards."""
    work = Path(tempfile.mkdtemp(prefix="vmfs-bench-cold-", dir=parent))
    image, mount_point = work / IMAGE, work / "mnt"
    mounter = Mounter(str(image), str(mount_point), sync=False)
    try:
        with open(image, "wb") as f:
            f.truncate(file_size + file_size // 8 + (64 << 20))
        # Inode tables and journal written now: no lazy initialisation writing during a run.
        made = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise VmfsError(f"bench: mkfs.ext4 {image}: {made.stderr.strip()}")
        try:
            mounter.mount()
        except MountError as e:
            raise VmfsError(f"bench: cold-cache root: {e}") from e
        loop_mode = "direct I/O" if _direct_io(mount_point) else "buffered (direct I/O refused)"
        ensure_data_file(mount_point, file_size)
        os.sync()
        print(
            f"bench: cold cache: {file_size >> 20} MiB file on ext4 in {image} "
            f"(loop device, {loop_mode}); page cache dropped before each run",
            file=sys.stderr,
        )
        yield mount_point
    finally:
        try:
            mounter.unmount()
        except MountError as e:
            raise VmfsError(f"bench: cold-cache root left mounted: {e}") from e
        shutil.rmtree(work, ignore_errors=True)


def drop_caches(root: Path) -> None:
    """Empty the page cache of the data file and all else (clean pages only: sync first)."""
    os.sync()
    fd = os.open(root / DATA_FILE, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")
