"""Block-device mode through the driver: INITIALISE mounts a real ext4 image, DEINITIALISE
unmounts it, and what the client wrote is on the image afterwards."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_caps import NEEDS_MOUNT

from vmfs.client import LoopbackServer
from vmfs.wire import Status

pytestmark = NEEDS_MOUNT


@pytest.fixture(autouse=True)
def no_mount_left_behind(tmp_path: Path) -> Iterator[None]:
    """A failing test must not leave its image mounted under the test's temporary folder."""
    yield
    target = os.path.realpath(tmp_path / "mnt")
    while is_mount_point(Path(target)):
        subprocess.run(["umount", "-l", target], check=False)


def is_mount_point(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def ext4_image(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A 16 MiB ext4 image, its mount point, and the serve arguments that mount one on the other."""
    image = tmp_path / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "16M"], check=True)
    mnt = tmp_path / "mnt"
    return image, mnt, ["--block-device", str(image), "--mount-point", str(mnt)]


def test_initialise_mounts_and_deinitialise_unmounts(tmp_path: Path) -> None:
    image, mnt, args = ext4_image(tmp_path)
    with LoopbackServer(directory=tmp_path / "loop", extra_args=args) as srv:
        c = srv.client
        assert c.stat("/")[0].status == Status.ERROR
        assert c.initialise().ok
        assert is_mount_point(mnt)
        assert c.mkdir("/logs").ok
        h = c.open("/logs/boot.txt", 2 | 4).data
        assert c.write(h, 0, b"written through vmfs").data == 20
        assert c.close(h).ok
        assert c.deinitialise().ok
        assert not is_mount_point(mnt)
        assert c.stat("/logs")[0].status == Status.ERROR
        assert c.initialise().ok, srv.log()
        assert c.listdir("/logs") == [b"boot.txt"]
        assert c.deinitialise().ok
    check = tmp_path / "check"
    check.mkdir()
    subprocess.run(["mount", "-o", "ro,loop", str(image), str(check)], check=True)
    try:
        assert (check / "logs" / "boot.txt").read_bytes() == b"written through vmfs"
    finally:
        subprocess.run(["umount", str(check)], check=True)


def test_a_restarted_driver_finds_the_filesystem_still_mounted(tmp_path: Path) -> None:
    _, mnt, args = ext4_image(tmp_path)
    with LoopbackServer(directory=tmp_path / "loop", extra_args=args) as srv:
        assert srv.client.initialise().ok
        srv.stop()
        srv.start()
        assert srv.client.stat("/")[0].ok
        assert srv.client.deinitialise().ok
    assert not is_mount_point(mnt)


def test_mount_failure_is_a_status_not_an_exit(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(os.urandom(1 << 20))
    args = ["--block-device", str(garbage), "--mount-point", str(tmp_path / "mnt")]
    with LoopbackServer(directory=tmp_path / "loop", extra_args=args) as srv:
        assert srv.client.initialise().status == Status.ERROR
        assert srv.client.initialise().status == Status.ERROR
        assert srv.process is not None and srv.process.poll() is None
        assert "INITIALISE failed" in srv.log()


def loop_devices_over(image: Path, settle: float = 0.0) -> str:
    """`losetup -j IMAGE`; with `settle`, wait that long for the kernel to finish detaching
    (an autoclear loop device may be released just after the unmount returns)."""
    deadline = time.monotonic() + settle
    while True:
        found = subprocess.run(
            ["losetup", "-j", str(image)], capture_output=True, text=True, check=True
        ).stdout.strip()
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def test_sigterm_unmounts_and_detaches_and_the_next_driver_mounts_again(tmp_path: Path) -> None:
    image, mnt, args = ext4_image(tmp_path)
    with LoopbackServer(directory=tmp_path / "loop", extra_args=args) as srv:
        c = srv.client
        assert c.initialise().ok
        h = c.open("/kept.txt", 2 | 4).data
        assert c.write(h, 0, b"before the stop").data == 15
        assert is_mount_point(mnt) and loop_devices_over(image)
        assert srv.stop() == 0
        assert not is_mount_point(mnt)
        assert loop_devices_over(image, settle=5) == ""
        assert "synced and unmounted" in srv.log()
        srv.start()
        assert c.stat("/kept.txt")[0].ok, srv.log()  # the client's INITIALISE still holds
        assert c.deinitialise().ok
    assert not is_mount_point(mnt) and loop_devices_over(image, settle=5) == ""
    check = tmp_path / "check"
    check.mkdir()
    subprocess.run(["mount", "-o", "ro,loop", str(image), str(check)], check=True)
    try:
        assert (check / "kept.txt").read_bytes() == b"before the stop"
    finally:
        subprocess.run(["umount", str(check)], check=True)


def test_file_open_refuses_a_fifo_on_a_mounted_disk_without_stalling(tmp_path: Path) -> None:
    """The disk is mounted nodev, so the kernel refuses its device nodes; a FIFO is opened
    without blocking (no writer needed), refused as not a regular file and closed again."""
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mkfifo(tree / "pipe")
    image, mnt, args = ext4_image(tmp_path)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "16M"], check=True)
    with LoopbackServer(directory=tmp_path / "loop", extra_args=args) as srv:
        c = srv.client
        assert c.initialise().ok
        for flags in (0, 2, 2 | 4):
            assert c.open("/pipe", flags).status == Status.ERROR
        assert c.stat("/pipe")[0].ok
        assert srv.process is not None
        held = {os.readlink(fd) for fd in Path(f"/proc/{srv.process.pid}/fd").iterdir()}
        assert str(mnt / "pipe") not in held
        assert c.deinitialise().ok
