"""Floods and limits: 10 000 commands in a burst, a full handle table, very large directories.

The driver must answer everything exactly once, refuse what exceeds its limits with a status
(TOO_MANY_OPEN_FILES), keep its memory bounded and keep serving.
"""

from __future__ import annotations

import os
import resource
import struct
from collections.abc import Iterator

import pytest
from hostile_helpers import (
    assert_no_extra_completions,
    message,
    open_fds,
    params,
    rss_bytes,
    send_many,
    wait_all,
)

from vmfs.client import Client, LoopbackServer
from vmfs.wire import Command

SUCCESS, TOO_MANY_OPEN_FILES, INVALID_COMMAND = 0, 8, 13
END_OF_DIRECTORY = 14
BIG_DIR_ENTRIES = 20_000
# An open listing holds a small fixed buffer, not the directory: 200 of them, and what else the
# driver may grow by.
MEMORY_SLACK = 24 << 20


def pid_of(server: LoopbackServer) -> int:
    assert server.process is not None and server.process.poll() is None
    return server.process.pid


def test_burst_of_10000_commands(client: Client, server: LoopbackServer) -> None:
    pid = pid_of(server)
    f = client.open("/f", 2 | 4).data
    assert client.write(f, 0, b"0123456789").ok
    path = client.put(b"/f")
    out = client.reserve(4096)
    kinds = [
        (Command.STAT, params(Command.STAT, path=path, buf=out), SUCCESS, 0),
        (Command.FILE_SIZE, struct.pack("<Q", f), SUCCESS, 10),
        (25, b"\xff" * 48, INVALID_COMMAND, 0),
        (Command.FILE_READ, struct.pack("<QQQQ", f, 2, out["offset"], 4), SUCCESS, 4),
    ]
    rss_before = rss_bytes(pid)
    expected: dict[int, tuple[int, int]] = {}
    messages = []
    for n in range(10_000):
        cmd, body, status, data = kinds[n % len(kinds)]
        cmd_id = (n * 2654435761) & ((1 << 64) - 1)  # distinct, scattered over the id space
        messages.append(message(cmd_id, cmd, body))
        expected[cmd_id] = (status, data)
    done = wait_all(client, send_many(client, messages), timeout=120)
    for cmd_id, (status, data) in expected.items():
        assert (done[cmd_id].status, done[cmd_id].data) == (status, data), cmd_id
    assert_no_extra_completions(client)
    assert rss_bytes(pid) - rss_before < 32 << 20


def test_handle_table_filled(client: Client, server: LoopbackServer) -> None:
    pid = pid_of(server)
    fds_before = open_fds(pid)
    rss_before = rss_bytes(pid)
    (server.root / "d").mkdir()
    file_path = client.put(b"/f")
    dir_path = client.put(b"/d")
    assert client.open("/f", 2 | 4).ok  # creates it; this handle counts too
    messages = []
    for n in range(1100):
        if n % 2:
            messages.append(
                message(n, Command.FILE_OPEN, params(Command.FILE_OPEN, path=file_path, flags=0))
            )
        else:
            messages.append(message(n, Command.DIR_OPEN, params(Command.DIR_OPEN, path=dir_path)))
    done = wait_all(client, send_many(client, messages), timeout=60)
    statuses = [done[n].status for n in range(1100)]
    opened = statuses.count(SUCCESS)
    assert set(statuses) == {SUCCESS, TOO_MANY_OPEN_FILES}
    first_refusal = statuses.index(TOO_MANY_OPEN_FILES)
    assert all(s == TOO_MANY_OPEN_FILES for s in statuses[first_refusal:]), (
        "a later open succeeded after an earlier one was refused",
        first_refusal,
        statuses[first_refusal - 5 : first_refusal + 20],
    )
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1100:
        assert opened == 1023  # the default table holds 1024
    assert all(done[n].data == 0 for n in range(1100) if statuses[n] != SUCCESS)
    assert client.stat("/f")[0].ok  # still serving
    closes = [
        message(
            5000 + n,
            Command.FILE_CLOSE if n % 2 else Command.DIR_CLOSE,
            struct.pack("<Q", done[n].data),
        )
        for n in range(first_refusal)
    ]
    assert all(c.ok for c in wait_all(client, send_many(client, closes), timeout=60).values())
    assert client.opendir("/d").ok
    assert open_fds(pid) <= fds_before + 2
    assert rss_bytes(pid) - rss_before < 32 << 20
    assert_no_extra_completions(client)


@pytest.fixture(scope="module")
def big_dir(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LoopbackServer, set[bytes]]]:
    base = tmp_path_factory.mktemp("big-dir")
    root = base / "root"
    big = root / "big"
    big.mkdir(parents=True)
    names = set()
    for n in range(BIG_DIR_ENTRIES):
        name = f"entry-{n:06d}-with-a-reasonably-long-name-{'x' * (n % 40)}"
        (big / name).touch()
        names.add(name.encode())
    with LoopbackServer(root=root, directory=base / "loop") as srv:
        assert srv.client.initialise().ok
        yield srv, names


def read_whole_listing(client: Client, handle: int) -> list[bytes]:
    """DIR_READ pipelined 255 at a time, each into its own 256-byte buffer."""
    base = 1 << 20
    names: list[bytes] = []
    next_id = 1 << 44
    while True:
        messages = [
            message(next_id + n, Command.DIR_READ, struct.pack("<QQQ", handle, base + 256 * n, 256))
            for n in range(255)
        ]
        done = wait_all(client, send_many(client, messages))
        for n in range(255):
            got = done[next_id + n]
            if got.status == END_OF_DIRECTORY:
                assert got.data == 0
                assert all(done[next_id + m].status == END_OF_DIRECTORY for m in range(n, 255))
                return names
            assert got.status == SUCCESS, got
            at = base + 256 * n
            assert client.share[at + got.data] == 0, "name not NUL-terminated"
            names.append(bytes(client.share[at : at + got.data]))
        next_id += 255


def test_directory_with_20000_entries_listed(big_dir: tuple[LoopbackServer, set[bytes]]) -> None:
    server, names = big_dir
    client = server.client
    pid = pid_of(server)
    rss_before = rss_bytes(pid)
    d = client.opendir("/big")
    assert d.ok
    listed = read_whole_listing(client, d.data)
    assert len(listed) == len(names) and set(listed) == names
    assert client.closedir(d.data).ok
    assert rss_bytes(pid) - rss_before < 64 << 20
    assert_no_extra_completions(client)


def test_large_directory_opened_over_and_over(big_dir: tuple[LoopbackServer, set[bytes]]) -> None:
    """Abandoned listings (MicroPython never closes them) of a big directory: memory is bounded."""
    server, names = big_dir
    client = server.client
    pid = pid_of(server)
    rss_before = rss_bytes(pid)
    path = client.put(b"/big")
    handles = []
    for batch in range(2):
        messages = [
            message(batch * 1000 + n, Command.DIR_OPEN, params(Command.DIR_OPEN, path=path))
            for n in range(100)
        ]
        for done in wait_all(client, send_many(client, messages), timeout=120).values():
            assert done.status == SUCCESS, done
            handles.append(done.data)
        assert rss_bytes(pid) - rss_before < MEMORY_SLACK, f"after {len(handles)} handles"
        assert client.stat("/big")[0].ok
    closes = [
        message(9000 + n, Command.DIR_CLOSE, struct.pack("<Q", h)) for n, h in enumerate(handles)
    ]
    assert all(c.ok for c in wait_all(client, send_many(client, closes), timeout=60).values())
    d = client.opendir("/big")
    assert d.ok, "memory given back on close"
    assert set(read_whole_listing(client, d.data)) == names
    assert client.closedir(d.data).ok
    assert_no_extra_completions(client)


def test_many_names_created_through_the_protocol(client: Client, server: LoopbackServer) -> None:
    """2 000 DIR_CREATEs pipelined, then every one listed exactly once."""
    buf_base = 2 << 20
    messages = []
    for n in range(2000):
        name = f"/n{n:05d}".encode()
        at = buf_base + 8 * n
        client.share[at : at + len(name)] = name
        messages.append(message(n, Command.DIR_CREATE, struct.pack("<QQ", at, len(name))))
    done = wait_all(client, send_many(client, messages), timeout=60)
    assert all(d.ok for d in done.values())
    listed = client.listdir("/")
    assert sorted(listed) == sorted(f"n{n:05d}".encode() for n in range(2000))
    assert sorted(os.listdir(server.root)) == sorted(n.decode() for n in listed)
