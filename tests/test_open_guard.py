"""FILE_OPEN never opens a device node, opens a FIFO without blocking and refuses what is not a
regular file, on a root that may hold device nodes (it looks first) and on a nodev root (the
kernel refuses device nodes; a path into another mount is looked at before it is opened)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_caps import NEEDS_MOUNT

from vmfs.client import Client, LoopbackServer
from vmfs.wire import Command, OpenFlags, Status

pytestmark = NEEDS_MOUNT

FLAGS = (OpenFlags.READ_ONLY, OpenFlags.READ_WRITE, OpenFlags.READ_WRITE | OpenFlags.CREATE)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points the test fills; each is unmounted afterwards (innermost first)."""
    made: list[Path] = []
    yield made
    for target in reversed(made):
        subprocess.run(["umount", "-l", str(target)], check=False)


def tmpfs(mounts: list[Path], target: Path, options: str) -> Path:
    target.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"{options},size=4m", "tmpfs", str(target)], check=True
    )
    mounts.append(target)
    return target


def special_files(directory: Path) -> None:
    """A FIFO, a character device node (the null device) and a regular file."""
    os.mkfifo(directory / "pipe")
    os.mknod(directory / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (directory / "file").write_bytes(b"regular\n")


class BlockedWriter:
    """A thread blocked opening a FIFO for writing: it goes on only once somebody opens it to
    read, so `opened` tells whether anybody did."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fd = os.open(self.fifo, os.O_WRONLY)
        self.opened.set()
        os.close(fd)

    def release(self) -> None:
        os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))
        self.thread.join(5)


def descriptors_of(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    targets = set()
    for fd in fds.iterdir():
        try:
            targets.add(os.readlink(fd))
        except OSError:
            continue
    return targets


def refused_unopened(c: Client, directory: str, writer: BlockedWriter) -> None:
    """Every access mode of FILE_OPEN on the FIFO and the device node answers ERROR, and the
    FIFO's writer is still blocked: nobody opened it."""
    for flags in FLAGS:
        assert c.open(f"{directory}/pipe", flags).status == Status.ERROR
        assert c.open(f"{directory}/null", flags).status == Status.ERROR
    assert not writer.opened.wait(0.5), "the driver opened the FIFO"


def test_a_root_that_may_hold_device_nodes_is_looked_at_before_every_open(
    tmp_path: Path, mounts: list[Path]
) -> None:
    root = tmpfs(mounts, tmp_path / "root", "dev")
    special_files(root)
    writer = BlockedWriter(root / "pipe")
    with LoopbackServer(root=root, directory=tmp_path / "loop") as srv:
        c = srv.client
        assert c.initialise().ok
        refused_unopened(c, "", writer)
        opened = c.open("/file", OpenFlags.READ_ONLY)
        assert opened.ok and c.close(opened.data).ok
    writer.release()
    assert writer.opened.is_set()


def test_a_nodev_root_refuses_special_files_after_a_non_blocking_open(
    tmp_path: Path, mounts: list[Path]
) -> None:
    """No look: the kernel refuses the device node itself; the FIFO is opened without blocking,
    found not to be a regular file and closed again; the driver keeps no descriptor of either."""
    root = tmpfs(mounts, tmp_path / "root", "nodev")
    special_files(root)
    (root / "dir").mkdir()
    with LoopbackServer(root=root, directory=tmp_path / "loop") as srv:
        c = srv.client
        assert c.initialise().ok
        for flags in FLAGS:
            for name in ("/pipe", "/null", "/dir"):
                assert c.open(name, flags).status == Status.ERROR, (name, flags)
        assert c.open("/missing", OpenFlags.READ_ONLY).status == Status.NO_FILE
        opened = c.open("/file", OpenFlags.READ_ONLY)
        assert opened.ok
        assert srv.process is not None
        held = descriptors_of(srv.process.pid)
        assert str(root / "file") in held
        assert not {str(root / n) for n in ("pipe", "null", "dir")} & held
        assert c.close(opened.data).ok


def test_a_path_into_another_mount_is_looked_at_before_it_is_opened(
    tmp_path: Path, mounts: list[Path]
) -> None:
    """Under a nodev root, a mount that allows device nodes: its files still open, its device
    node and FIFO are refused without being opened (the open that stays on the root's mount
    fails, and the path is looked at before it is opened across)."""
    root = tmpfs(mounts, tmp_path / "root", "nodev")
    inner = tmpfs(mounts, root / "inner", "dev")
    special_files(inner)
    writer = BlockedWriter(inner / "pipe")
    with LoopbackServer(root=root, directory=tmp_path / "loop") as srv:
        c = srv.client
        assert c.initialise().ok
        refused_unopened(c, "/inner", writer)
        opened = c.open("/inner/file", OpenFlags.READ_ONLY)
        assert opened.ok
        done, data = c.read(opened.data, 0, 64)
        assert (done.status, data) == (Status.SUCCESS, b"regular\n")
        assert c.close(opened.data).ok
        created = c.open("/inner/new", OpenFlags.READ_WRITE | OpenFlags.CREATE)
        assert created.ok and c.close(created.data).ok
    assert (inner / "new").is_file()
    writer.release()


def test_opens_and_closes_queued_together_are_each_answered(
    tmp_path: Path, mounts: list[Path]
) -> None:
    """A burst of FILE_OPENs (good, missing, a directory, a FIFO) then their FILE_CLOSEs, sent
    before one signal: every command gets its own answer and no descriptor is left behind."""
    root = tmpfs(mounts, tmp_path / "root", "nodev")
    special_files(root)
    (root / "dir").mkdir()
    names = ["file", "missing", "dir", "pipe"] * 10
    expected = {
        "file": Status.SUCCESS,
        "missing": Status.NO_FILE,
        "dir": Status.ERROR,
        "pipe": Status.ERROR,
    }
    with LoopbackServer(root=root, directory=tmp_path / "loop") as srv:
        c = srv.client
        assert c.initialise().ok
        with c.path_buffers(*names) as bufs:
            ids = [c.call_later(Command.FILE_OPEN, path=b, flags=OpenFlags.READ_ONLY) for b in bufs]
            c.signal()
            answers = [c.wait(i) for i in ids]
        assert [a.status for a in answers] == [expected[n] for n in names]
        handles = [a.data for a in answers if a.ok]
        assert len(set(handles)) == len(handles) == 10
        ids = [c.call_later(Command.FILE_CLOSE, fd=h) for h in handles]
        ids.append(c.call_later(Command.FILE_CLOSE, fd=handles[0]))  # closed a moment before
        c.signal()
        statuses = [c.wait(i).status for i in ids]
        assert statuses == [Status.SUCCESS] * 10 + [Status.INVALID_FD]
        assert srv.process is not None
        assert not any(t.startswith(f"{root}/") for t in descriptors_of(srv.process.pid))


@pytest.mark.parametrize("options", ["dev", "nodev"])
def test_symlinks_inside_the_root_are_followed_inside_it(
    tmp_path: Path, mounts: list[Path], options: str
) -> None:
    """A path that only descends is first looked up following no symlink; one it meets sends
    the open back to the scoped lookup, which follows it inside the root."""
    root = tmpfs(mounts, tmp_path / "root", options)
    special_files(root)
    (root / "sub").mkdir()
    os.symlink("../file", root / "sub" / "up")
    os.symlink("/file", root / "absolute")
    os.symlink("sub", root / "dirlink")
    os.symlink("loop", root / "loop")
    with LoopbackServer(root=root, directory=tmp_path / "loop") as srv:
        c = srv.client
        assert c.initialise().ok
        for name in ("sub/up", "absolute", "dirlink/up", "sub/../sub/up"):
            opened = c.open(name, OpenFlags.READ_ONLY)
            assert opened.ok, name
            assert c.read(opened.data, 0, 64)[1] == b"regular\n", name
            assert c.close(opened.data).ok
        assert c.open("loop", OpenFlags.READ_ONLY).status == Status.INVALID_PATH
        assert c.open("dirlink/../null", OpenFlags.READ_ONLY).status == Status.ERROR
