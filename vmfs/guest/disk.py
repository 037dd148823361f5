"""A disk like the LionsOS example's: an MBR with one FAT partition, made and read on the host.

Made with sfdisk and mkfs.fat (at the partition's offset); read back with mtools after the guest
has powered off, so the check does not trust the guest's view of what it wrote.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

SECTOR = 512
PARTITION_START = 2048  # sectors: 1 MiB, what fdisk and the LionsOS example images use
_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLS_NO_VFAT="0")


def make_fat_image(path: Path, size_mib: int = 64, label: str = "VMFS") -> Path:
    """Create `path`: MBR, one FAT (type 0x0c) partition from 1 MiB to the end, formatted."""
    path = Path(path)
    with open(path, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    subprocess.run(
        ["sfdisk", "--quiet", str(path)],
        input=f"label: dos\nstart={PARTITION_START}, type=c\n",
        text=True,
        check=True,
        capture_output=True,
    )
    _, size = first_partition(path)
    subprocess.run(
        ["mkfs.fat", "--offset", str(PARTITION_START), "-n", label, str(path), str(size // 1024)],
        check=True,
        capture_output=True,
    )
    return path


def first_partition(path: Path) -> tuple[int, int]:
    """(byte offset, byte size) of MBR partition 1."""
    with open(path, "rb") as f:
        mbr = f.read(SECTOR)
    if mbr[510:512] != b"\x55\xaa":
        raise ValueError(f"{path} has no MBR signature")
    start, count = struct.unpack_from("<II", mbr, 0x1BE + 8)
    if count == 0:
        raise ValueError(f"{path} has no partition 1")
    return start * SECTOR, count * SECTOR


def _image_spec(path: Path) -> str:
    offset, _ = first_partition(path)
    return f"{path}@@{offset}"


def mtools(path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run an mtools command (`mdir`, `mtype`, ...) on partition 1 of the image."""
    tool, *rest = args
    return subprocess.run(
        [tool, "-i", _image_spec(path), *rest], check=True, capture_output=True, env=_ENV
    )


def list_files(path: Path) -> list[str]:
    """Every file and directory in the FAT partition, as "/dir/name" (directories end in "/")."""
    proc = subprocess.run(
        ["mdir", "-i", _image_spec(path), "-/", "-b", "::/"], capture_output=True, env=_ENV
    )
    if proc.returncode != 0:
        mtools(path, "minfo")  # an empty volume makes mdir -b fail; a broken one fails here too
        return []
    out = proc.stdout.decode()
    return sorted(line.strip().removeprefix("::") for line in out.splitlines() if line.strip())


def read_file(path: Path, name: str) -> bytes:
    """The bytes of `name` ("/dir/file") in the FAT partition."""
    return mtools(path, "mcopy", "-n", f"::{name}", "-").stdout


def write_file(path: Path, name: str, data: bytes) -> None:
    """Put a file into the partition from the host (e.g. to seed a test)."""
    subprocess.run(
        ["mcopy", "-o", "-i", _image_spec(path), "-", f"::{name}"],
        input=data,
        check=True,
        capture_output=True,
        env=_ENV,
    )
