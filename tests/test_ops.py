"""Every command against a temporary root, success and error statuses (docs/protocol.md "The
commands").

Runs in-process against both executors: io_uring and synchronous calls.
"""

from __future__ import annotations

import os
import stat as st
from pathlib import Path

import pytest

from vmfs.client import Client
from vmfs.wire import Command, Status, build_params

S = Status
RW_CREATE = 2 | 4


def make_file(client: Client, path: str, data: bytes) -> None:
    opened = client.open(path, RW_CREATE)
    assert opened.ok, opened
    assert client.write(opened.data, 0, data).data == len(data)
    assert client.close(opened.data).ok


def read_all(client: Client, path: str) -> bytes:
    opened = client.open(path, 0)
    assert opened.ok, opened
    done, data = client.read(opened.data, 0, 1 << 16)
    assert done.ok
    client.close(opened.data)
    return data


def test_stat_root_and_initialise_twice(local: tuple[Client, Path]) -> None:
    client, _ = local
    assert client.initialise().status == S.SUCCESS
    done, record = client.stat("/")
    assert done.ok and record is not None and st.S_ISDIR(record["mode"])


def test_create_write_read_back(local: tuple[Client, Path]) -> None:
    client, root = local
    opened = client.open("/a.txt", RW_CREATE)
    assert opened.ok and opened.data < 2**31
    assert client.write(opened.data, 0, b"hello").data == 5
    done, data = client.read(opened.data, 0, 64)
    assert (done.status, done.data, data) == (S.SUCCESS, 5, b"hello")
    assert client.close(opened.data).ok
    assert (root / "a.txt").read_bytes() == b"hello"
    assert st.S_IMODE((root / "a.txt").stat().st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_open_missing(local: tuple[Client, Path]) -> None:
    client, _ = local
    assert client.open("/nope", 0).status == S.NO_FILE
    assert client.open("/nope", 0).data == 0
    assert client.open("/nodir/x", RW_CREATE).status == S.NO_FILE


def test_stat_file_and_directory(local: tuple[Client, Path]) -> None:
    client, root = local
    make_file(client, "/a.txt", b"hello")
    assert client.mkdir("/d").ok
    assert st.S_IMODE((root / "d").stat().st_mode) == 0o755 & ~_umask()
    done, record = client.stat("/a.txt")
    assert done.ok and record is not None
    real = os.stat(root / "a.txt")
    assert st.S_ISREG(record["mode"]) and record["size"] == 5 and record["nlink"] >= 1
    assert record["ino"] == real.st_ino and record["dev"] == real.st_dev
    assert (
        record["mtime"] == int(real.st_mtime) and record["mtime_nsec"] == real.st_mtime_ns % 10**9
    )
    assert all(record[f] < 10**9 for f in ("atime_nsec", "mtime_nsec", "ctime_nsec"))
    assert record["used"] == record["blocks"] * 512 == real.st_blocks * 512
    assert st.S_ISDIR(client.stat("/d")[1]["mode"])  # type: ignore[index]


def test_stat_failures(local: tuple[Client, Path]) -> None:
    client, _ = local
    make_file(client, "/a.txt", b"x")
    assert client.stat("/missing")[0].status == S.NO_FILE
    assert client.stat("/a.txt/x")[0].status == S.NOT_DIRECTORY
    with client.path_buffers("/a.txt") as (path,):
        out = client.reserve(135)
        assert client.call(Command.STAT, path=path, buf=out).status == S.INVALID_BUFFER
        client.release(out)
        out = client.reserve(136)
        bad_path = {"offset": len(client.share), "size": 4}
        assert client.call(Command.STAT, path=bad_path, buf=out).status == S.INVALID_PATH
        client.release(out)


def test_read_past_eof_and_write_beyond(local: tuple[Client, Path]) -> None:
    client, _ = local
    make_file(client, "/a.txt", b"hello")
    h = client.open("/a.txt", 2).data
    assert client.read(h, 100, 64)[0].data == 0
    assert client.read(h, 3, 64)[1] == b"lo"
    assert client.size(h).data == 5
    assert client.write(h, 10, b"X").data == 1
    assert client.size(h).data == 11
    assert client.read(h, 0, 11)[1] == b"hello" + bytes(5) + b"X"
    assert client.read(h, 2**63, 1)[0].status == S.ERROR
    client.close(h)


def test_truncate(local: tuple[Client, Path]) -> None:
    client, _ = local
    make_file(client, "/a.txt", b"hello")
    h = client.open("/a.txt", 2).data
    assert client.truncate(h, 2).ok and client.size(h).data == 2
    assert client.truncate(h, 4096).ok and client.size(h).data == 4096
    assert client.read(h, 2, 10)[1] == bytes(10)
    assert client.truncate(h, 2**63).status == S.ERROR
    client.close(h)


def test_access_modes(local: tuple[Client, Path]) -> None:
    client, _ = local
    make_file(client, "/a.txt", b"hello")
    h_r = client.open("/a.txt", 0).data
    assert client.write(h_r, 0, b"x").status == S.INVALID_WRITE
    assert client.truncate(h_r, 0).status == S.INVALID_WRITE
    assert client.sync(h_r).ok
    h_w = client.open("/a.txt", 1).data
    assert client.read(h_w, 0, 4)[0].status == S.INVALID_READ
    assert client.open("/a.txt", 3).status == S.ERROR
    assert client.open("/a.txt", 8).status == S.ERROR
    assert client.open("/a.txt", 1 << 40).status == S.ERROR
    client.close(h_r)
    client.close(h_w)


def test_directory_create_and_remove(local: tuple[Client, Path]) -> None:
    client, root = local
    make_file(client, "/a.txt", b"")
    assert client.mkdir("/d").ok
    assert client.mkdir("/d").status == S.ALREADY_EXISTS
    assert client.mkdir("/").status == S.ALREADY_EXISTS
    assert client.mkdir("/x/y").status == S.NO_FILE
    assert client.mkdir("/a.txt/y").status == S.NOT_DIRECTORY
    make_file(client, "/d/f", b"")
    assert client.rmdir("/d").status == S.NOT_EMPTY
    assert client.remove("/d/f").ok
    assert client.rmdir("/d").ok
    assert client.rmdir("/d").status == S.NO_FILE
    assert client.rmdir("/a.txt").status == S.NOT_DIRECTORY
    assert client.rmdir("/").status == S.SERVER_WAS_DENIED
    assert root.is_dir()


def test_file_remove(local: tuple[Client, Path]) -> None:
    client, root = local
    make_file(client, "/a.txt", b"")
    assert client.remove("/a.txt").ok
    assert client.stat("/a.txt")[0].status == S.NO_FILE
    assert client.remove("/a.txt").status == S.NO_FILE
    assert client.mkdir("/e").ok
    assert client.remove("/e").status == S.ERROR
    assert (root / "e").is_dir()
    assert client.remove("/").status == S.SERVER_WAS_DENIED


def test_rename(local: tuple[Client, Path]) -> None:
    client, _ = local
    make_file(client, "/r1", b"one")
    assert client.rename("/r1", "/r2").ok
    assert client.stat("/r1")[0].status == S.NO_FILE
    assert read_all(client, "/r2") == b"one"
    assert client.rename("/nope", "/z").status == S.NO_FILE
    assert client.rename("/r2", "/r2").ok and read_all(client, "/r2") == b"one"
    make_file(client, "/s", b"new")
    make_file(client, "/t", b"old")
    assert client.rename("/s", "/t").ok and read_all(client, "/t") == b"new"
    assert client.rename("/", "/q").status == S.SERVER_WAS_DENIED
    assert client.rename("/t", "/").status == S.SERVER_WAS_DENIED


def test_rename_directories(local: tuple[Client, Path]) -> None:
    client, _ = local
    for d in ("/m", "/n", "/k"):
        assert client.mkdir(d).ok
    make_file(client, "/m/1", b"")
    make_file(client, "/n/1", b"")
    make_file(client, "/f", b"")
    assert client.rename("/m", "/n").status == S.NOT_EMPTY
    assert client.rename("/m", "/k").ok
    assert client.rename("/k", "/k/sub").status == S.INVALID_NAME
    assert client.rename("/f", "/n").status == S.ERROR
    assert client.rename("/n", "/f").status == S.NOT_DIRECTORY


def test_listing(local: tuple[Client, Path]) -> None:
    client, _ = local
    assert client.mkdir("/L").ok
    make_file(client, "/L/b", b"")
    make_file(client, "/L/a", b"")
    d = client.opendir("/L").data
    assert client.telldir(d).data == 0
    names = []
    for _ in range(2):
        done, name = client.readdir(d)
        assert done.ok and done.data == 1 and name is not None
        names.append(name)
    assert sorted(names) == [b"a", b"b"]
    end = client.readdir(d)[0]
    assert (end.status, end.data) == (S.END_OF_DIRECTORY, 0)
    assert client.readdir(d)[0].status == S.END_OF_DIRECTORY
    assert client.telldir(d).data == 2
    assert client.seekdir(d, 0).ok and client.readdir(d)[1] == names[0]
    assert client.rewinddir(d).ok and client.readdir(d)[1] == names[0]
    assert client.seekdir(d, 1000).ok and client.readdir(d)[0].status == S.END_OF_DIRECTORY
    assert client.seekdir(d, -1).status == S.ERROR
    assert client.rewinddir(d).ok
    assert client.readdir(d, size=255)[0].status == S.INVALID_BUFFER
    assert client.readdir(d, size=256)[1] == names[0]
    assert client.closedir(d).ok
    assert client.closedir(d).status == S.INVALID_FD


def test_dir_read_writes_a_nul_after_the_name(local: tuple[Client, Path]) -> None:
    client, _ = local
    make_file(client, "/only", b"")
    d = client.opendir("/").data
    out = client.reserve(0x8000)
    client.share[out["offset"] : out["offset"] + 16] = b"\xff" * 16
    done = client.call(Command.DIR_READ, fd=d, buf=out)
    assert done.data == 4
    assert bytes(client.share[out["offset"] : out["offset"] + 6]) == b"only\0\xff"
    client.release(out)
    client.closedir(d)


def test_empty_directory_and_wrong_kinds(local: tuple[Client, Path]) -> None:
    client, _ = local
    assert client.mkdir("/E").ok
    d = client.opendir("/E").data
    assert client.readdir(d)[0].status == S.END_OF_DIRECTORY
    client.closedir(d)
    make_file(client, "/E/a", b"")
    assert client.opendir("/E/a").status == S.NOT_DIRECTORY
    assert client.opendir("/missing").status == S.NO_FILE
    assert client.open("/E", 0).status == S.ERROR
    assert client.open("/E", 1).status == S.ERROR


def test_handle_hygiene(local: tuple[Client, Path]) -> None:
    client, _ = local
    make_file(client, "/a", b"x")
    h = client.open("/a", 0).data
    assert client.close(h).ok
    assert client.close(h).status == S.INVALID_FD
    assert client.read(h, 0, 4)[0].status == S.INVALID_FD
    assert client.close(0x7FFFABCD).status == S.INVALID_FD
    h2 = client.open("/a", 0).data
    assert h2 != h
    assert client.readdir(h2)[0].status == S.INVALID_FD
    d = client.opendir("/").data
    assert client.read(d, 0, 4)[0].status == S.INVALID_FD
    assert client.size(d).status == S.INVALID_FD
    assert client.close(d).status == S.INVALID_FD
    assert client.closedir(d).ok and client.close(h2).ok


def test_unlink_open_file_and_two_handles(local: tuple[Client, Path]) -> None:
    client, _ = local
    h = client.open("/u", RW_CREATE).data
    assert client.write(h, 0, b"data").data == 4
    assert client.remove("/u").ok
    assert client.read(h, 0, 64)[1] == b"data"
    assert client.close(h).ok
    assert client.stat("/u")[0].status == S.NO_FILE
    w = client.open("/p", 1 | 4).data
    r = client.open("/p", 0).data
    client.write(w, 0, b"xyz")
    assert client.sync(w).ok
    assert client.read(r, 0, 8)[1] == b"xyz"


@pytest.mark.parametrize(
    "form", [b"p/q", b"/p/q", b"//p//q", b"/p/./q", b"/p/../p/q", b"/p/q\0", b"/p/q/"]
)
def test_path_forms(local: tuple[Client, Path], form: bytes) -> None:
    client, _ = local
    client.mkdir("/p")
    make_file(client, "/p/q", b"Q")
    done, record = client.stat(form)
    assert done.ok and record is not None and record["size"] == 1


def test_root_path_forms_and_bad_paths(local: tuple[Client, Path]) -> None:
    client, _ = local
    make_file(client, "/f", b"")
    assert client.listdir(".") == client.listdir("/") == client.listdir("///") == [b"f"]
    with client.path_buffers(b"") as (empty,):
        assert client.call(Command.STAT, path={"offset": 0, "size": 0}, buf=empty).status == (
            S.INVALID_PATH
        )
    assert client.stat(b"/" * 4096)[0].status == S.INVALID_PATH
    assert client.stat(b"/" + b"n" * 256)[0].status == S.INVALID_PATH
    assert client.stat(b"\0abc")[0].status == S.INVALID_PATH


def test_open_creates_nothing_outside_through_symlinks(local: tuple[Client, Path]) -> None:
    client, root = local
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (root / "esc").symlink_to("../../..")
    (root / "abs").symlink_to("/")
    (root / "out").symlink_to(outside)
    assert client.stat("/../../../etc/passwd")[0].status == S.NO_FILE
    assert client.stat("/esc/etc/passwd")[0].status == S.NO_FILE
    assert client.stat("/abs/etc/passwd")[0].status == S.NO_FILE
    assert client.open("/out/secret", 0).status == S.NO_FILE
    assert client.mkdir("/../outside2").ok and (root / "outside2").is_dir()
    assert not (root.parent / "outside2").exists()
    assert client.remove("/esc").ok and not (root / "esc").exists()
    assert sorted(os.listdir(outside)) == ["secret"]


def test_invalid_commands_then_normal_service(local: tuple[Client, Path]) -> None:
    client, _ = local
    for cmd_type, cmd_id in ((20, 77), (2**64 - 1, 78)):
        client.send(cmd_type, bytes(48), cmd_id)
    client.signal()
    for cmd_id in (77, 78):
        done = client.wait(cmd_id)
        assert (done.status, done.data) == (S.INVALID_COMMAND, 0)
    assert client.stat("/")[0].ok


def test_invalid_buffers(local: tuple[Client, Path]) -> None:
    client, _ = local
    h = client.open("/b", RW_CREATE).data
    share = len(client.share)
    cases = [(share, 4), (0, 0), (2**64 - 8, 16), (share - 100, 101)]
    for offset, size in cases:
        buf = {"offset": offset, "size": size}
        assert client.call(Command.FILE_READ, fd=h, offset=0, buf=buf).status == S.INVALID_BUFFER
        assert client.call(Command.FILE_WRITE, fd=h, offset=0, buf=buf).status == (S.INVALID_BUFFER)
    bad = {"offset": share, "size": 1}
    assert client.call(Command.FILE_READ, fd=12345, offset=0, buf=bad).status == S.INVALID_BUFFER
    end = {"offset": share - 10, "size": 10}
    assert client.call(Command.FILE_WRITE, fd=h, offset=0, buf=end).data == 10


def test_large_transfer(local: tuple[Client, Path]) -> None:
    client, _ = local
    payload = os.urandom(1 << 20)
    h = client.open("/big", RW_CREATE).data
    assert client.write(h, 0, payload).data == len(payload)
    assert client.read(h, 0, len(payload))[1] == payload


def test_pipelined_batch_is_ordered(local: tuple[Client, Path]) -> None:
    """One batch, one signal: results as if run one at a time in queue order.

    docs/protocol.md "Rules every command follows" (queue order).
    """
    client, _ = local
    h = client.open("/pipe", RW_CREATE).data
    data = client.put(b"A" * 4096)
    out = client.reserve(4096)
    sends = [
        (Command.FILE_WRITE, build_params(Command.FILE_WRITE, fd=h, offset=0, buf=data), 5),
        (Command.FILE_READ, build_params(Command.FILE_READ, fd=h, offset=0, buf=out), 9),
        (Command.FILE_TRUNCATE, build_params(Command.FILE_TRUNCATE, fd=h, length=0), 2**63),
        (Command.FILE_SIZE, build_params(Command.FILE_SIZE, fd=h), 0),
    ]
    for cmd, params, cmd_id in sends:
        client.send(cmd, params, cmd_id)
    client.signal()
    results = {cmd_id: client.wait(cmd_id) for _, _, cmd_id in sends}
    assert [results[i].data for i in (5, 9, 2**63, 0)] == [4096, 4096, 0, 0]
    assert client.take(out, 4096) == b"A" * 4096
    assert client.mkdir("/dir1").ok
    with client.path_buffers("/dir1", "/dir2") as (a, b):
        client.send(Command.RENAME, build_params(Command.RENAME, old_path=a, new_path=b), 1)
        client.send(Command.DIR_OPEN, build_params(Command.DIR_OPEN, path=b), 3)
        client.signal()
        assert client.wait(1).ok and client.wait(3).ok


def test_deinitialise_closes_handles(local: tuple[Client, Path]) -> None:
    client, _ = local
    h = client.open("/x", RW_CREATE).data
    assert client.deinitialise().ok
    assert client.stat("/")[0].status == S.ERROR
    assert client.deinitialise().ok
    assert client.initialise().ok
    assert client.read(h, 0, 1)[0].status == S.INVALID_FD
