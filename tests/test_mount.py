"""Mounter against real images, loop devices and mount(2); needs root and loop devices."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_caps import NEEDS_MOUNT, NEEDS_VFAT

from vmfs.driver.mount import Mounter, MountError, first_partition

pytestmark = NEEDS_MOUNT

MIB = 1 << 20


def run(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, check=True, capture_output=True, text=True).stdout


def mounted_on(path: Path) -> list[str]:
    """mountinfo lines for `path`, read independently of the code under test."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if line.split()[4] == target]


def loops_backed_by(image: Path) -> list[str]:
    out = run("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE")
    return [line for line in out.splitlines() if str(image) in line]


def make_ext4(image: Path, size_mib: int = 16, offset: int = 0, src: Path | None = None) -> None:
    argv = ["mkfs.ext4", "-q", "-F"]
    if src is not None:
        argv += ["-d", str(src)]
    if offset:
        argv += ["-E", f"offset={offset}"]
    run(*argv, str(image), f"{size_mib}M")


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "mnt"
    yield point
    while mounted_on(point):
        os.sync()
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def ext4(tmp_path: Path) -> Path:
    image = tmp_path / "ext4.img"
    make_ext4(image)
    return image


def test_write_unmount_remount_read(ext4: Path, mnt: Path) -> None:
    m = Mounter(str(ext4), str(mnt))
    assert not m.is_mounted()
    m.mount()
    assert m.is_mounted() and len(mounted_on(mnt)) == 1
    flags = os.statvfs(mnt).f_flag
    for flag in (os.ST_NODEV, os.ST_NOSUID, os.ST_NOEXEC, os.ST_SYNCHRONOUS):
        assert flags & flag, f"mount flag {flag:#x} missing"
    (mnt / "hello.txt").write_bytes(b"written through the mount")
    m.unmount()
    assert not m.is_mounted() and not mounted_on(mnt)
    assert not loops_backed_by(ext4), "loop device left attached after unmount"
    assert run("debugfs", "-R", "cat /hello.txt", str(ext4)) == "written through the mount"
    m.mount()
    assert (mnt / "hello.txt").read_bytes() == b"written through the mount"
    m.unmount()


def test_mount_is_idempotent_and_creates_the_mount_point(ext4: Path, mnt: Path) -> None:
    deep = mnt / "a" / "b"
    m = Mounter(str(ext4), str(deep))
    m.mount()
    m.mount()
    assert len(mounted_on(deep)) == 1
    assert len(loops_backed_by(ext4)) == 1
    Mounter(str(ext4), str(deep)).mount()
    assert len(mounted_on(deep)) == 1
    m.unmount()
    assert not mounted_on(deep)


def test_unmount_when_not_mounted_is_a_no_op(ext4: Path, mnt: Path) -> None:
    mnt.mkdir()
    Mounter(str(ext4), str(mnt)).unmount()
    assert not mounted_on(mnt)


def test_no_sync_option(ext4: Path, mnt: Path) -> None:
    m = Mounter(str(ext4), str(mnt), sync=False)
    m.mount()
    assert not os.statvfs(mnt).f_flag & os.ST_SYNCHRONOUS
    m.unmount()


def test_unmount_busy_raises_and_stays_mounted(ext4: Path, mnt: Path) -> None:
    m = Mounter(str(ext4), str(mnt))
    m.mount()
    with open(mnt / "held", "w"):
        with pytest.raises(MountError) as e:
            m.unmount()
        assert e.value.errno == errno.EBUSY
        assert str(mnt) in str(e.value)
        assert m.is_mounted()
    m.unmount()
    assert not m.is_mounted()


def test_something_else_on_the_mount_point_is_refused(ext4: Path, mnt: Path) -> None:
    mnt.mkdir()
    run("mount", "-t", "tmpfs", "other", str(mnt))
    m = Mounter(str(ext4), str(mnt))
    assert not m.is_mounted()
    with pytest.raises(MountError) as e:
        m.mount()
    assert e.value.errno == errno.EBUSY
    m.unmount()
    assert len(mounted_on(mnt)) == 1


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_first_partition_of_a_disk_image(tmp_path: Path, mnt: Path, label: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("in the partition")
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    os.truncate(image, 24 * MIB)
    run("sfdisk", "-q", str(image), stdin=f"label: {label}\nstart=2048, size=32768\n")
    make_ext4(image, 16, offset=2048 * 512, src=src)
    with open(image, "rb") as f:
        assert first_partition(f, 24 * MIB) == (2048 * 512, 16 * MIB)
    m = Mounter(str(image), str(mnt))
    m.mount()
    assert (mnt / "marker").read_text() == "in the partition"
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize <= 16 * MIB
    (mnt / "second").write_text("back")
    m.unmount()
    m.mount()
    assert (mnt / "second").read_text() == "back"
    m.unmount()
    assert not loops_backed_by(image)


def test_partitioned_block_device(tmp_path: Path, mnt: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("block device")
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    os.truncate(image, 24 * MIB)
    run("sfdisk", "-q", str(image), stdin="start=2048, type=83\n")
    make_ext4(image, 16, offset=2048 * 512, src=src)
    loop = run("losetup", "--find", "--show", str(image)).strip()
    try:
        m = Mounter(loop, str(mnt))
        m.mount()
        assert m.is_mounted()
        assert (mnt / "marker").read_text() == "block device"
        m.unmount()
        assert not m.is_mounted()
    finally:
        run("losetup", "-d", loop)


def test_garbage_image_gives_errno_and_frees_the_loop(tmp_path: Path, mnt: Path) -> None:
    image = tmp_path / "garbage.img"
    image.write_bytes(os.urandom(4096) * 1024)
    with pytest.raises(MountError) as e:
        Mounter(str(image), str(mnt)).mount()
    assert e.value.errno != 0
    assert str(image) in str(e.value)
    assert not mounted_on(mnt)
    assert not loops_backed_by(image)


def test_missing_device(tmp_path: Path, mnt: Path) -> None:
    with pytest.raises(MountError) as e:
        Mounter(str(tmp_path / "absent"), str(mnt)).mount()
    assert e.value.errno == errno.ENOENT
    assert "absent" in str(e.value)


@NEEDS_VFAT
def test_fat_image(tmp_path: Path, mnt: Path) -> None:
    image = tmp_path / "fat.img"
    run("mkfs.vfat", "-C", str(image), str(16 * 1024))
    m = Mounter(str(image), str(mnt))
    m.mount()
    (mnt / "grüße.txt").write_text("fat")
    m.unmount()
    m.mount()
    assert (mnt / "grüße.txt").read_text() == "fat"
    m.unmount()


@pytest.mark.parametrize("fat_size", ["12", "16", "32"])
def test_fat_boot_sector_is_not_a_partition_table(tmp_path: Path, fat_size: str) -> None:
    image = tmp_path / "fat.img"
    run("mkfs.vfat", "-F", fat_size, "-C", str(image), str(40 * 1024))
    with open(image, "rb") as f:
        assert f.read(512)[510:] == b"\x55\xaa"
        assert first_partition(f, 40 * MIB) is None
    with open(image, "r+b") as f:
        f.seek(446)
        f.write(struct.pack("<B3xB3xII", 0x80, 0x0C, 1, 100))
        assert first_partition(f, 40 * MIB) is None, "boot code bytes taken for a partition"
