"""Buffers: out of the share, overflowing, empty, and far larger than one 32 KiB unit.

docs/protocol.md "Buffers in the data share": a buffer (offset, size) is valid iff size > 0,
offset < share and size <= share - offset. Invalid ones get INVALID_BUFFER (before the handle is
looked at: "Rules every command follows"); valid ones are served whatever their size, and nothing
outside [offset, offset + n) is written (n = what the command defines).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_helpers import (
    U64,
    assert_no_extra_completions,
    hypothesis_profile,
    message,
    send_many,
    wait_all,
)
from hypothesis import given
from hypothesis import strategies as st

from vmfs.client import LoopbackServer
from vmfs.wire import Command

SUCCESS, ERROR, INVALID_BUFFER = 0, 1, 2
SMALL = 1 << 20
SENTINEL = 0xEE


def bad_buffers(share: int) -> list[tuple[int, int]]:
    return [
        (0, 0),
        (share // 2, 0),
        (share, 1),
        (share - 1, 2),
        (share + 1_000_000_000, 1),
        (U64 - 7, 16),
        (8, U64),
        (1 << 63, 1 << 63),  # offset + size wraps to 0 in 64 bits
        (share - 8, U64 - share + 16),  # offset + size wraps to 8
        (U64, U64),
    ]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    base = tmp_path_factory.mktemp("buffers")
    with LoopbackServer(root=base / "root", directory=base / "loop", data_size=SMALL) as srv:
        assert srv.client.initialise().ok
        (srv.root / "d").mkdir(exist_ok=True)
        (srv.root / "d" / "only").write_bytes(b"")
        yield srv


@pytest.fixture
def handles(small: LoopbackServer) -> Iterator[tuple[int, int]]:
    client = small.client
    f = client.open("/file", 2 | 4)
    d = client.opendir("/d")
    assert f.ok and d.ok
    yield f.data, d.data
    client.close(f.data)
    client.closedir(d.data)
    client.allocator = type(client.allocator)(len(client.share))


def test_invalid_buffers_every_command(small: LoopbackServer, handles: tuple[int, int]) -> None:
    client = small.client
    f, d = handles
    path = client.put(b"/file")
    messages, n = [], 0
    for off, size in bad_buffers(SMALL):
        for handle in (f, 0x7FFF_FFFF):  # a good and a bad handle: the buffer is checked first
            bodies = [
                (Command.FILE_READ, struct.pack("<QQQQ", handle, 0, off, size)),
                (Command.FILE_WRITE, struct.pack("<QQQQ", handle, 0, off, size)),
                (Command.DIR_READ, struct.pack("<QQQ", d if handle == f else handle, off, size)),
            ]
            bodies.append((Command.STAT, struct.pack("<QQQQ", path["offset"], 5, off, size)))
            for cmd, body in bodies:
                messages.append(message(n, cmd, body))
                n += 1
    done = wait_all(client, send_many(client, messages))
    for cmd_id, completion in done.items():
        assert (completion.status, completion.data) == (INVALID_BUFFER, 0), (cmd_id, completion)
    assert (small.root / "file").read_bytes() == b""
    assert client.telldir(d).data == 0  # no entry consumed
    assert_no_extra_completions(client)


def test_too_small_output_buffers(small: LoopbackServer, handles: tuple[int, int]) -> None:
    client = small.client
    _, d = handles
    path = client.put(b"/file")
    out = client.reserve(4096)
    body = struct.pack("<QQQQ", path["offset"], 5, out["offset"], 135)
    assert wait_all(client, send_many(client, [message(1, Command.STAT, body)]))[1].status == 2
    body = struct.pack("<QQQ", d, out["offset"], 255)
    assert wait_all(client, send_many(client, [message(2, Command.DIR_READ, body)]))[2].status == 2
    assert client.readdir(d, 256)[1] == b"only"


def test_buffers_touching_the_share_end(small: LoopbackServer, handles: tuple[int, int]) -> None:
    client = small.client
    f, _ = handles
    client.share[SMALL - 5 :] = b"12345"
    body = struct.pack("<QQQQ", f, 0, SMALL - 5, 5)
    assert wait_all(client, send_many(client, [message(1, Command.FILE_WRITE, body)]))[1].data == 5
    body = struct.pack("<QQQQ", f, 4, SMALL - 1, 1)
    done = wait_all(client, send_many(client, [message(2, Command.FILE_READ, body)]))[2]
    assert (done.status, done.data) == (SUCCESS, 1)
    assert bytes(client.share[SMALL - 1 :]) == b"5"
    # The whole share in one command, both ways.
    pattern = bytes(range(256)) * (SMALL // 256)
    client.share[:] = pattern
    body = struct.pack("<QQQQ", f, 0, 0, SMALL)
    assert (
        wait_all(client, send_many(client, [message(3, Command.FILE_WRITE, body)]))[3].data == SMALL
    )
    client.share[:] = bytes(SMALL)
    done = wait_all(client, send_many(client, [message(4, Command.FILE_READ, body)]))[4]
    assert (done.status, done.data) == (SUCCESS, SMALL)
    assert bytes(client.share) == pattern


def test_outputs_never_spill(small: LoopbackServer, handles: tuple[int, int]) -> None:
    client = small.client
    f, d = handles
    assert client.truncate(f, 0).ok
    assert client.write(f, 0, b"hello").ok
    client.share[:] = bytes([SENTINEL]) * SMALL
    base = 0x10003  # odd, inside a unit
    client.share[0:5] = b"/file"
    messages = [
        message(1, Command.FILE_READ, struct.pack("<QQQQ", f, 0, base, 0x8000)),
        message(2, Command.STAT, struct.pack("<QQQQ", 0, 5, base + 0x20000, 0x8000)),
        message(3, Command.DIR_READ, struct.pack("<QQQ", d, base + 0x40000, 0x8000)),
    ]
    done = wait_all(client, send_many(client, messages))
    assert [done[i].status for i in (1, 2, 3)] == [SUCCESS] * 3
    expected = bytearray([SENTINEL]) * SMALL
    expected[0:5] = b"/file"
    expected[base : base + 5] = b"hello"
    stat_at = base + 0x20000
    expected[stat_at : stat_at + 136] = client.share[stat_at : stat_at + 136]
    dir_at = base + 0x40000
    expected[dir_at : dir_at + 5] = b"only\0"
    assert done[3].data == 4
    assert bytes(client.share) == bytes(expected), "a command wrote outside its output"
    record = struct.unpack_from("<17Q", client.share, stat_at)
    assert record[7] == 5 and record[16] == record[9] * 512  # size, used = blocks * 512


def test_file_positions_at_the_limits(small: LoopbackServer, handles: tuple[int, int]) -> None:
    client = small.client
    f, _ = handles
    data = client.put(b"x" * 16)
    out = client.reserve(64)
    cases = [
        (Command.FILE_READ, struct.pack("<QQQQ", f, 1 << 63, out["offset"], 64)),
        (Command.FILE_READ, struct.pack("<QQQQ", f, U64, out["offset"], 64)),
        (Command.FILE_READ, struct.pack("<QQQQ", f, (1 << 63) - 1, out["offset"], 64)),
        (Command.FILE_WRITE, struct.pack("<QQQQ", f, 1 << 63, data["offset"], 16)),
        (Command.FILE_WRITE, struct.pack("<QQQQ", f, U64 - 8, data["offset"], 16)),
        (Command.FILE_WRITE, struct.pack("<QQQQ", f, (1 << 63) - 8, data["offset"], 16)),
        (Command.FILE_TRUNCATE, struct.pack("<QQ", f, 1 << 63)),
        (Command.FILE_TRUNCATE, struct.pack("<QQ", f, U64)),
    ]
    done = wait_all(client, send_many(client, [message(n, c, b) for n, (c, b) in enumerate(cases)]))
    assert [done[n].status for n in (0, 1, 3, 4, 6, 7)] == [ERROR] * 6
    assert (done[2].status, done[2].data) == (SUCCESS, 0)  # at or past EOF reads 0 bytes
    assert done[5].status == ERROR  # the write would end past 2^63 - 1: EINVAL
    assert client.size(f).data < 1 << 63
    assert_no_extra_completions(client)


@hypothesis_profile()
@given(
    offset=st.one_of(st.integers(0, SMALL + 16), st.integers(0, U64)),
    size=st.one_of(st.integers(0, SMALL + 16), st.integers(0, U64)),
    write=st.booleans(),
)
def test_random_buffers(small: LoopbackServer, offset: int, size: int, write: bool) -> None:
    client = small.client
    valid = size > 0 and offset < SMALL and offset + size <= SMALL  # Python ints: no overflow
    f = client.open("/rand", 2 | 4).data
    try:
        cmd = Command.FILE_WRITE if write else Command.FILE_READ
        if valid and write:
            payload = os.urandom(size)
            client.share[offset : offset + size] = payload
        if valid and not write:
            payload = os.urandom(size)
            assert client.truncate(f, 0).ok
            client.share[:size] = payload
            body = struct.pack("<QQQQ", f, 0, 0, size)
            assert wait_all(client, send_many(client, [message(9, 6, body)]))[9].data == size
            client.share[offset : offset + size] = bytes(size)
        body = struct.pack("<QQQQ", f, 0, offset, size)
        done = wait_all(client, send_many(client, [message(7, cmd, body)]))[7]
        if not valid:
            assert (done.status, done.data) == (INVALID_BUFFER, 0)
            return
        assert (done.status, done.data) == (SUCCESS, size)
        if write:
            assert (small.root / "rand").read_bytes()[:size] == payload
        else:
            assert bytes(client.share[offset : offset + size]) == payload
    finally:
        assert client.close(f).ok


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    base = tmp_path_factory.mktemp("big-buffers")
    with LoopbackServer(root=base / "root", directory=base / "loop") as srv:
        assert srv.client.initialise().ok
        yield srv


@pytest.mark.parametrize("size", [0x8000 + 1, 1 << 20, 16 << 20, (64 << 20) - 12345])
def test_large_reads_and_writes_span_many_units(big: LoopbackServer, size: int) -> None:
    client = big.client
    share = len(client.share)
    payload = os.urandom(size)
    src = 12345 if size + 12345 <= share else 0
    client.share[src : src + size] = payload
    f = client.open("/big", 2 | 4).data
    try:
        body = struct.pack("<QQQQ", f, 7, src, size)
        done = wait_all(client, send_many(client, [message(1, Command.FILE_WRITE, body)]))[1]
        assert (done.status, done.data) == (SUCCESS, size)
        assert Path(big.root / "big").read_bytes()[7:] == payload
        dst = share - size  # ends exactly at the share's end
        client.share[dst:] = bytes(size)
        body = struct.pack("<QQQQ", f, 7, dst, size)
        done = wait_all(client, send_many(client, [message(2, Command.FILE_READ, body)]))[2]
        assert (done.status, done.data) == (SUCCESS, size)
        assert bytes(client.share[dst:]) == payload
    finally:
        assert client.close(f).ok
