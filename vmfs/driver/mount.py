"""Mount the block device on INITIALISE and unmount it on DEINITIALISE, without a shell.

The C driver ran `mount -o sync` through the shell; here mount(2) is called directly, the
filesystem type is found by trying what the kernel offers, a partitioned device has its first
partition mounted, and a regular image file works too. A device that is not a block device (an
image file) or a partition the kernel exposes no node for is attached to a loop device through
/dev/loop-control and LOOP_CONFIGURE (native helper; Linux >= 5.8, no util-linux needed in the
guest). Those loop devices are autoclear: unmounting frees them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("vmfs.driver.mount")

SECTOR = 512
PREFERRED_TYPES = ("ext4", "vfat")
EXTRA_TYPES = ("exfat", "btrfs", "xfs")
UNUSABLE_TYPES = {"fuseblk"}
WRONG_TYPE_ERRNOS = {errno.EINVAL, errno.ENODEV}


class MountError(Exception):
    """Mounting or unmounting failed; `errno` says why, the message says what."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


@dataclass(frozen=True)
class MountEntry:
    """What the driver reads of one line of /proc/self/mountinfo."""

    device: str
    source: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mount_entry(mount_point: str, mountinfo: str = "/proc/self/mountinfo") -> MountEntry | None:
    """The visible (last) mount on `mount_point`, if any."""
    want = os.path.realpath(mount_point)
    found = None
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 10 or _unescape(fields[4]) != want:
                continue
            rest = fields[fields.index("-") + 1 :]
            found = MountEntry(fields[2], _unescape(rest[1]))
    return found


def kernel_block_filesystems() -> list[str]:
    """Filesystem types the kernel has now that need a block device."""
    with open("/proc/filesystems") as f:
        return [line.split()[0] for line in f if line.strip() and not line.startswith("nodev")]


def first_partition(f: BinaryIO, size: int) -> tuple[int, int] | None:
    """(offset, length) in bytes of the first partition of an MBR or GPT disk, else None."""
    f.seek(0)
    mbr = f.read(SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        return None
    if mbr[0] in (0xEB, 0xE9) and b"FAT" in (mbr[54:57], mbr[82:85]):
        return None
    status, ptype, start, count = struct.unpack_from("<B3xB3xII", mbr, 446)
    if status not in (0, 0x80) or ptype == 0 or start == 0 or count == 0:
        return None
    if ptype == 0xEE:
        return _gpt_first_partition(f, size)
    if (start + count) * SECTOR > size:
        return None
    return start * SECTOR, count * SECTOR


def _gpt_first_partition(f: BinaryIO, size: int) -> tuple[int, int] | None:
    f.seek(SECTOR)
    header = f.read(92)
    if len(header) < 92 or header[:8] != b"EFI PART":
        return None
    entries_lba, entries = struct.unpack_from("<QI", header, 72)
    if entries == 0:
        return None
    f.seek(entries_lba * SECTOR)
    entry = f.read(48)
    if len(entry) < 48 or entry[:16] == bytes(16):
        return None
    first, last = struct.unpack_from("<QQ", entry, 32)
    if first == 0 or last < first or (last + 1) * SECTOR > size:
        return None
    return first * SECTOR, (last - first + 1) * SECTOR


def partition_node(device: str) -> str | None:
    """The kernel's node for the first partition of a block device (vda1, loop0p1), if any."""
    for candidate in (device + "1", device + "p1"):
        try:
            if stat.S_ISBLK(os.stat(candidate).st_mode):
                return candidate
        except OSError:
            continue
    return None


def _dev(st_rdev: int) -> str:
    return f"{os.major(st_rdev)}:{os.minor(st_rdev)}"


class Mounter:
    """Mounts `device` (block device or image file) on `mount_point`, and unmounts it."""

    def __init__(self, device: str, mount_point: str, sync: bool = True) -> None:
        self.device = device
        self.mount_point = mount_point
        self.sync = sync

    def _error(self, err: int, what: str) -> MountError:
        return MountError(err, f"{what}: {os.strerror(err)} [{errno.errorcode.get(err, err)}]")

    def _is_ours(self, entry: MountEntry) -> bool:
        """Whether the mounted device is our device, its partition, or a loop over it."""
        sysfs = Path("/sys/dev/block") / entry.device
        try:
            backing = (sysfs / "loop" / "backing_file").read_text().strip()
        except OSError:
            backing = None
        if backing == os.path.realpath(self.device):
            return True
        try:
            st = os.stat(self.device)
        except OSError:
            return False
        if not stat.S_ISBLK(st.st_mode):
            return False
        if entry.device == _dev(st.st_rdev):
            return True
        try:
            parent = (sysfs.resolve().parent / "dev").read_text().strip()
        except OSError:
            return False
        return (sysfs / "partition").exists() and parent == _dev(st.st_rdev)

    def is_mounted(self) -> bool:
        entry = mount_entry(self.mount_point)
        return entry is not None and self._is_ours(entry)

    def _source(self) -> tuple[str, int | None]:
        """The block device to mount, and the loop fd to close once mounted (if one was made)."""
        try:
            st = os.stat(self.device)
            with open(self.device, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                extent = first_partition(f, size)
        except OSError as e:
            raise self._error(e.errno or errno.EIO, f"cannot read {self.device}") from e
        block = stat.S_ISBLK(st.st_mode)
        if not block and not stat.S_ISREG(st.st_mode):
            raise self._error(errno.ENOTBLK, f"{self.device} is neither block device nor file")
        if extent is None:
            return (self.device, None) if block else self._loop(0, 0)
        node = partition_node(self.device) if block else None
        if node is not None:
            log.info("%s is partitioned; mounting %s", self.device, node)
            return node, None
        log.info("%s is partitioned; first partition at byte %d", self.device, extent[0])
        return self._loop(*extent)

    def _loop(self, offset: int, length: int) -> tuple[str, int]:
        from vmfs._native import ffi, lib

        number = ffi.new("int *")
        fd = lib.vmfs_loop_attach(self.device.encode(), offset, length, 0, number)
        if fd < 0:
            raise self._error(-fd, f"cannot attach {self.device} to a loop device")
        return f"/dev/loop{number[0]}", fd

    def mount(self) -> None:
        """Mount the device unless it already is (a restarted driver finds it mounted)."""
        from vmfs._native import lib

        entry = mount_entry(self.mount_point)
        if entry is not None:
            if self._is_ours(entry):
                return
            raise self._error(
                errno.EBUSY, f"{self.mount_point} already has {entry.source} mounted on it"
            )
        try:
            os.makedirs(self.mount_point, exist_ok=True)
        except OSError as e:
            raise self._error(e.errno or errno.EIO, f"cannot create {self.mount_point}") from e
        source, loop_fd = self._source()
        flags = lib.MS_NODEV | lib.MS_NOSUID | lib.MS_NOEXEC
        if self.sync:
            flags |= lib.MS_SYNCHRONOUS
        tried: dict[str, int] = {}
        try:
            for fstype in self._candidate_types():
                data = b"utf8" if fstype == "vfat" else b""
                rc = lib.vmfs_mount(
                    source.encode(), self.mount_point.encode(), fstype.encode(), flags, data
                )
                if rc == 0:
                    log.info("mounted %s (%s) on %s", source, fstype, self.mount_point)
                    return
                tried[fstype] = -rc
        finally:
            if loop_fd is not None:
                os.close(loop_fd)
        what = source if loop_fd is None else f"{self.device} (through {source})"
        attempts = ", ".join(f"{t}: {errno.errorcode.get(e, e)}" for t, e in tried.items())
        real = [e for e in tried.values() if e not in WRONG_TYPE_ERRNOS]
        if real:
            raise self._error(real[0], f"cannot mount {what} on {self.mount_point} ({attempts})")
        raise self._error(errno.EINVAL, f"no filesystem the kernel knows on {what} ({attempts})")

    @staticmethod
    def _candidate_types() -> list[str]:
        """Common types first; types the kernel lacks so far may load as modules on mount."""
        types = [*PREFERRED_TYPES, *kernel_block_filesystems(), *EXTRA_TYPES]
        return [t for t in dict.fromkeys(types) if t not in UNUSABLE_TYPES]

    def unmount(self) -> None:
        """Flush and unmount; nothing to do when our device is not mounted there."""
        from vmfs._native import lib

        if not self.is_mounted():
            return
        os.sync()
        rc = lib.vmfs_umount2(self.mount_point.encode(), 0)
        if rc < 0:
            raise self._error(-rc, f"cannot unmount {self.mount_point}")
        self._flush_device()
        log.info("unmounted %s", self.mount_point)

    def _flush_device(self) -> None:
        """A loop writes into the device's page cache: push it to the disk."""
        try:
            fd = os.open(self.device, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            log.warning("fsync %s after unmount: %s", self.device, e.strerror)
        finally:
            os.close(fd)
