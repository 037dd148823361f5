"""Block-device mode through the driver: INITIALISE mounts a real ext4 image, DEINITIALISE
unmounts it, and what the client wrote is on the image afterwards."""

from __future__ import annotations

import os
import subprocess
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


def test_initialise_mounts_and_deinitialise_unmounts(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "16M"], check=True)
    mnt = tmp_path / "mnt"
    args = ["--block-device", str(image), "--mount-point", str(mnt)]
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
    image = tmp_path / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "16M"], check=True)
    mnt = tmp_path / "mnt"
    args = ["--block-device", str(image), "--mount-point", str(mnt)]
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
