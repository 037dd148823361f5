"""The native code answers exactly what the Python engine answers, and io_uring is optional."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from memory_fs import on_memory_filesystem
from vmfs._native import ffi, lib

from vmfs.client import Client, LoopbackServer
from vmfs.driver.native import Context
from vmfs.driver.paths import RESOLVE
from vmfs.shm import Share
from vmfs.uring import AT_EMPTY_PATH, DISABLE_ENV, IORING_OP_STATX, new_statx, perform
from vmfs.wire import STAT_SIZE, OpenFlags, StatRecord

MODES = {
    "fast": [],
    "ordinary": ["--no-fast-path"],
    "bounce": ["--bounce"],
    "no-uring": ["--no-uring"],
}


def session(client: Client, root: Path) -> list[object]:
    """A mix of well-formed and malformed reads, writes and stats; every answer recorded."""
    (root / "data.bin").write_bytes(bytes(range(256)) * 64)
    (root / "dir").mkdir()
    out: list[object] = [client.initialise().status]
    opened = client.open("data.bin", OpenFlags.READ_WRITE)
    ro = client.open("data.bin", OpenFlags.READ_ONLY)
    out += [opened.status, ro.status]
    fd, rfd = opened.data, ro.data
    for offset, size in ((0, 4096), (16000, 4096), (16384, 10), (1 << 40, 8), (5, 1)):
        done, data = client.read(fd, offset, size)
        out.append((done.status, done.data, data))
    out.append(client.write(fd, 100, b"hello").status)
    out.append(client.write(fd, 16384, b"tail!").data)
    out.append(client.write(rfd, 0, b"x").status)  # INVALID_WRITE
    out.append(client.read(rfd, 0, 16400)[1])
    out.append(client.read(fd + 1, 0, 8)[0].status)  # INVALID_FD
    out.append(client.call_raw_read(fd, 1 << 63, 8).status)  # ERROR
    for path in ("data.bin", "/dir", "/", "missing", "data.bin/x", "../../etc/passwd"):
        done, record = client.stat(path)
        if record:  # what does not depend on which tree or when it was made
            record = {k: record[k] for k in ("mode", "nlink", "size", "blocks", "used")}
        out.append((path, done.status, record))
    out.append(client.close(fd).status)
    out.append(client.read(fd, 0, 8)[0].status)
    out += listing_session(client, root)
    return out


def listing_session(client: Client, root: Path) -> list[object]:
    """Listing answers that do not depend on the filesystem's order: 600 names span a few
    getdents64 chunks; seeks are checked against the same handle's own sequential reads."""
    for n in range(600):
        (root / "dir" / f"name-{n:04d}").touch()
    out: list[object] = []
    handle = client.opendir("/dir").data
    listed = []
    for _ in range(700):  # bounded: a listing that never ends fails instead of hanging
        done = client.readdir(handle)
        if not done[0].ok:
            break
        listed.append(done[1])
    out += [sorted(listed), done[0].status, done[0].data, client.readdir(handle)[0].status]
    out.append(client.telldir(handle).data)
    for target in (599, 300, 0, 256, 700):
        out.append(client.seekdir(handle, target).status)
        out.append(client.telldir(handle).data)
        done, name = client.readdir(handle)
        out.append((done.status, name == (listed[target] if target < 600 else None)))
    out.append(client.readdir(handle, size=255)[0].status)  # INVALID_BUFFER, nothing consumed
    out.append(client.telldir(handle).data)
    out.append(client.readdir(handle + 1)[0].status)  # INVALID_FD
    out.append(client.rewinddir(handle).status)
    out.append(client.readdir(handle)[1] == listed[0])
    out.append(client.closedir(handle).status)
    out.append(client.readdir(handle)[0].status)
    return out


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_session(tmp_path: Path, args: list[str]) -> list[object]:
    root = tmp_path / "root"
    with LoopbackServer(root=root, directory=tmp_path / "loop", extra_args=args) as srv:
        srv.client.call_raw_read = lambda fd, off, size: _raw_read(srv.client, fd, off, size)
        return session(srv.client, root)


def _raw_read(client: Client, fd: int, offset: int, size: int) -> object:
    from vmfs.wire import Command

    buf = client.reserve(size)
    try:
        return client.call(Command.FILE_READ, fd=fd, offset=offset, buf=buf)
    finally:
        client.release(buf)


def test_every_mode_answers_like_the_ordinary_path(tmp_path: Path, mode: str) -> None:
    expected = run_session(tmp_path / "reference", MODES["ordinary"])
    assert run_session(tmp_path / mode, MODES[mode]) == expected


def test_every_mode_answers_like_the_ordinary_path_on_a_memory_filesystem(mode: str) -> None:
    """tmpfs takes the lanes a disk never does (writes done at once in the fast lane)."""
    with on_memory_filesystem("vmfs-native-") as base:
        expected = run_session(base / "reference", MODES["ordinary"])
        assert run_session(base / mode, MODES[mode]) == expected


def test_stat_record_carries_what_the_kernel_says(tmp_path: Path) -> None:
    """The one encoder of the stat record (csrc/handles.c), against os.stat's own view."""
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "d").mkdir()
    os.symlink("/f", tmp_path / "link")  # absolute: resolved inside the root
    context = Context(4)
    share = Share(memoryview(bytearray(4096)), direct=True)
    context.attach_share(share)
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        for name, target in ((b"f", "f"), (b"d", "d"), (b"link", "f"), (b".", ".")):
            fd = lib.vmfs_openat2(root, name, os.O_PATH | os.O_CLOEXEC, 0, RESOLVE)
            sx = new_statx()
            assert perform((IORING_OP_STATX, fd, b"", AT_EMPTY_PATH, sx)) == 0
            os.close(fd)
            lib.vmfs_stat_out(context.ctx, 100, sx)
            record = StatRecord.parse(bytes(share.view[100 : 100 + STAT_SIZE]))
            st = os.stat(tmp_path / target)
            assert (record.dev, record.ino, record.mode, record.nlink) == (
                st.st_dev,
                st.st_ino,
                st.st_mode,
                st.st_nlink,
            ), name
            assert (record.uid, record.gid, record.size, record.blocks) == (
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_blocks,
            )
            assert (record.mtime, record.mtime_nsec) == divmod(st.st_mtime_ns, 10**9)
            assert record.used == st.st_blocks * 512
    finally:
        os.close(root)
        context.close()


def test_native_read_and_write_loops(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDWR)
    try:
        buf = ffi.new("char[]", 32)
        assert lib.vmfs_pread_full(fd, buf, 32, 4, 0) == 6  # short only at end of file
        assert ffi.buffer(buf, 6)[:] == b"456789"
        assert lib.vmfs_pread_full(fd, buf, 8, 100, 0) == 0
        assert lib.vmfs_pwrite_full(fd, b"ab", 2, 12) == 2
        assert path.read_bytes() == b"0123456789\0\0ab"
        assert lib.vmfs_pread_full(-1, buf, 8, 0, 0) < 0
    finally:
        os.close(fd)


def test_driver_falls_back_to_synchronous_calls_without_io_uring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DISABLE_ENV, "1")
    with LoopbackServer(root=tmp_path / "root", directory=tmp_path / "loop") as srv:
        assert srv.client.initialise().ok
        opened = srv.client.open("f", OpenFlags.READ_WRITE | OpenFlags.CREATE)
        assert srv.client.write(opened.data, 0, b"still serving").ok
        assert srv.client.read(opened.data, 0, 64)[1] == b"still serving"
        srv.stop()
        log = srv.log()
    assert log.count("io_uring unavailable") == 1
    assert "synchronous calls (io_uring off)" in log
