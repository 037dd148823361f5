"""Handles: forged, stale, wrong-type, double-closed, or past the table's limit.

docs/protocol.md "Handles": every bad handle gets INVALID_FD with no side effect, a full table
gets TOO_MANY_OPEN_FILES, handles stay below 2^31 and a closed value is not handed out again
while a client could still hold it. A handle is never a Linux descriptor, so the driver's own
descriptors (0, 1, 2, the queues, io_uring) are never reachable through one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_helpers import (
    HANDLE_CEILING,
    U64,
    HeldRing,
    assert_no_extra_completions,
    hypothesis_profile,
    message,
    open_fds,
    send_many,
    wait_all,
)
from hypothesis import assume, given
from hypothesis import strategies as st

from vmfs import fsm, uring
from vmfs.client import Client, LoopbackServer
from vmfs.driver.executor import Executor
from vmfs.driver.handles import HandleTable
from vmfs.driver.ops import Operations
from vmfs.driver.queueport import QueuePort
from vmfs.shm import Share
from vmfs.wire import QUEUE_REGION_SIZE, Command, QueueView, Status

SUCCESS, INVALID_FD, TOO_MANY_OPEN_FILES = 0, 4, 8

FILE_HANDLE_COMMANDS = (
    Command.FILE_CLOSE,
    Command.FILE_READ,
    Command.FILE_WRITE,
    Command.FILE_SIZE,
    Command.FILE_TRUNCATE,
    Command.FILE_SYNC,
)
DIR_HANDLE_COMMANDS = (
    Command.DIR_CLOSE,
    Command.DIR_READ,
    Command.DIR_SEEK,
    Command.DIR_TELL,
    Command.DIR_REWIND,
)
FORGED = [0, 1, 2, 3, 4, 5, 10, 100, 1023, 4095, 4097, 8191, HANDLE_CEILING - 1]
FORGED += [HANDLE_CEILING, 1 << 32, (1 << 32) + 4096, 1 << 63, U64]


def handle_messages(
    client: Client, handle: int, first_id: int, cmds: tuple[Command, ...]
) -> list[bytes]:
    """One message per command with `handle` and otherwise valid parameters."""
    top = len(client.share)
    data = {"offset": top - 0x10000, "size": 19}
    client.share[top - 0x10000 : top - 0x10000 + 19] = b"must not be written"
    out = {"offset": top - 0x8000, "size": 0x8000}
    messages = []
    for n, cmd in enumerate(cmds):
        if cmd in (Command.FILE_READ, Command.FILE_WRITE):
            buf = data if cmd == Command.FILE_WRITE else out
            body = struct.pack("<QQQQ", handle, 0, buf["offset"], buf["size"])
        elif cmd == Command.FILE_TRUNCATE:
            body = struct.pack("<QQ", handle, 0)
        elif cmd == Command.DIR_READ:
            body = struct.pack("<QQQ", handle, out["offset"], 0x8000)
        elif cmd == Command.DIR_SEEK:
            body = struct.pack("<Qq", handle, 0)
        else:
            body = struct.pack("<Q", handle)
        messages.append(message(first_id + n, cmd, body))
    return messages


def assert_all_invalid_fd(client: Client, handle: int, cmds: tuple[Command, ...]) -> None:
    ids = send_many(client, handle_messages(client, handle, 1 << 40, cmds))
    done = wait_all(client, ids)
    for cmd_id, cmd in zip(ids, cmds, strict=True):
        assert (done[cmd_id].status, done[cmd_id].data) == (INVALID_FD, 0), (handle, cmd)


@pytest.fixture
def victim(client: Client, server: LoopbackServer) -> tuple[int, int]:
    """An open file handle and an open directory handle whose state must not change."""
    (server.root / "d").mkdir()
    (server.root / "d" / "entry").write_bytes(b"")
    opened = client.open("/victim", 2 | 4)
    assert opened.ok
    assert client.write(opened.data, 0, b"victim content").ok
    listing = client.opendir("/d")
    assert listing.ok
    return opened.data, listing.data


def assert_victim_intact(client: Client, server: LoopbackServer, victim: tuple[int, int]) -> None:
    file_handle, dir_handle = victim
    assert (server.root / "victim").read_bytes() == b"victim content"
    done, data = client.read(file_handle, 0, 100)
    assert (done.status, data) == (SUCCESS, b"victim content")
    assert client.telldir(dir_handle).data == 0
    assert client.readdir(dir_handle)[1] == b"entry"


def test_forged_handles_are_invalid_fd(
    client: Client, server: LoopbackServer, victim: tuple[int, int]
) -> None:
    forged = set(FORGED)
    for h in victim:
        forged |= {h - 1, h + 1, h ^ (1 << 12), h ^ (1 << 20), h | HANDLE_CEILING, h + (1 << 32)}
    forged -= set(victim)
    for handle in sorted(forged):
        assert_all_invalid_fd(client, handle, FILE_HANDLE_COMMANDS + DIR_HANDLE_COMMANDS)
    assert_victim_intact(client, server, victim)
    assert_no_extra_completions(client)


def test_driver_descriptors_are_not_handles(client: Client, server: LoopbackServer) -> None:
    """Writing to "handle" 1 or 2 must not reach the driver's stdout/stderr (the C driver's did)."""
    marker = b"SHOULD-NEVER-BE-PRINTED-BY-THE-DRIVER"
    for handle in range(0, 64):
        assert client.write(handle, 0, marker).status == INVALID_FD
        assert client.close(handle).status == INVALID_FD
        assert client.closedir(handle).status == INVALID_FD
    assert marker.decode() not in server.log()
    assert client.stat("/")[0].ok


def test_stale_handles_stay_invalid(client: Client, server: LoopbackServer) -> None:
    first = client.open("/a", 2 | 4)
    assert first.ok and client.close(first.data).ok
    assert_all_invalid_fd(client, first.data, FILE_HANDLE_COMMANDS + DIR_HANDLE_COMMANDS)
    second = client.open("/a", 2)
    assert second.ok and second.data != first.data
    assert_all_invalid_fd(client, first.data, FILE_HANDLE_COMMANDS + DIR_HANDLE_COMMANDS)
    assert client.write(second.data, 0, b"ok").ok
    d = client.opendir("/")
    assert d.ok and client.closedir(d.data).ok
    assert_all_invalid_fd(client, d.data, FILE_HANDLE_COMMANDS + DIR_HANDLE_COMMANDS)


def test_wrong_type_handles(
    client: Client, server: LoopbackServer, victim: tuple[int, int]
) -> None:
    file_handle, dir_handle = victim
    assert_all_invalid_fd(client, file_handle, DIR_HANDLE_COMMANDS)
    assert_all_invalid_fd(client, dir_handle, FILE_HANDLE_COMMANDS)
    assert_victim_intact(client, server, victim)


def test_double_close(client: Client, victim: tuple[int, int]) -> None:
    file_handle, dir_handle = victim
    assert client.close(file_handle).status == SUCCESS
    assert client.close(file_handle).status == INVALID_FD
    assert client.closedir(dir_handle).status == SUCCESS
    assert client.closedir(dir_handle).status == INVALID_FD
    # The same double close pipelined in one batch.
    h = client.open("/victim", 0).data
    ids = send_many(client, [message(n, Command.FILE_CLOSE, struct.pack("<Q", h)) for n in (1, 2)])
    done = wait_all(client, ids)
    assert (done[1].status, done[2].status) == (SUCCESS, INVALID_FD)


def test_close_then_use_in_one_batch(client: Client) -> None:
    h = client.open("/f", 2 | 4).data
    data = client.put(b"12345678")
    out = client.reserve(64)
    messages = [
        message(1, Command.FILE_WRITE, struct.pack("<QQQQ", h, 0, data["offset"], 8)),
        message(2, Command.FILE_CLOSE, struct.pack("<Q", h)),
        message(3, Command.FILE_READ, struct.pack("<QQQQ", h, 0, out["offset"], 64)),
        message(4, Command.FILE_WRITE, struct.pack("<QQQQ", h, 8, data["offset"], 8)),
    ]
    done = wait_all(client, send_many(client, messages))
    assert [done[i].status for i in (1, 2, 3, 4)] == [SUCCESS, SUCCESS, INVALID_FD, INVALID_FD]
    assert done[1].data == 8


@pytest.fixture
def small_table(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(
        root=tmp_path / "root", directory=tmp_path / "loop", extra_args=["--handles", "8"]
    ) as srv:
        assert srv.client.initialise().ok
        yield srv


def test_full_table_is_too_many_open_files(small_table: LoopbackServer) -> None:
    client = small_table.client
    pid = small_table.process.pid if small_table.process else 0
    fds_before = open_fds(pid)
    (small_table.root / "d").mkdir()
    handles = []
    for n in range(8):
        done = client.open(f"/f{n}", 2 | 4) if n % 2 else client.opendir("/d")
        assert done.ok, (n, done)
        handles.append((n % 2, done.data))
    for _ in range(3):
        refused = client.open("/f1", 0)
        assert (refused.status, refused.data) == (TOO_MANY_OPEN_FILES, 0)
        refused = client.opendir("/d")
        assert (refused.status, refused.data) == (TOO_MANY_OPEN_FILES, 0)
        refused = client.open("/not-created", 2 | 4)
        assert (refused.status, refused.data) == (TOO_MANY_OPEN_FILES, 0)
    assert not (small_table.root / "not-created").exists()
    assert client.stat("/f1")[0].ok  # other commands keep working
    is_file, h = handles.pop()
    assert (client.close(h) if is_file else client.closedir(h)).ok
    again = client.open("/f1", 0)
    assert again.ok
    handles.append((1, again.data))
    for is_file, h in handles:
        assert (client.close(h) if is_file else client.closedir(h)).ok
    assert open_fds(pid) == fds_before, "descriptors leaked"


def test_values_are_below_2_31_and_not_reissued(small_table: LoopbackServer) -> None:
    client = small_table.client
    seen: set[int] = set()
    keep = client.open("/keep", 2 | 4).data
    seen.add(keep)
    path = client.put(b"/cycled")
    assert client.open("/cycled", 2 | 4).ok  # create it (and leave one handle open)
    for batch in range(20):
        ids = send_many(
            client,
            [
                message(n, Command.FILE_OPEN, struct.pack("<QQQ", path["offset"], 7, 0))
                for n in range(100)
            ],
        )
        opened = wait_all(client, ids)
        values = [c.data for c in opened.values() if c.ok]
        assert len(values) == 6, [c.status for c in opened.values()][:10]  # 8 - keep - cycled
        for value in values:
            assert value < HANDLE_CEILING
            assert value not in seen, f"handle {value} reissued in batch {batch}"
            seen.add(value)
        closes = send_many(
            client,
            [message(n, Command.FILE_CLOSE, struct.pack("<Q", v)) for n, v in enumerate(values)],
        )
        assert all(c.ok for c in wait_all(client, closes).values())
    assert client.close(keep).ok


def test_deinitialise_invalidates_every_handle(client: Client) -> None:
    f = client.open("/x", 2 | 4).data
    d = client.opendir("/").data
    assert client.deinitialise().ok
    assert client.initialise().ok
    assert_all_invalid_fd(client, f, FILE_HANDLE_COMMANDS)
    assert_all_invalid_fd(client, d, DIR_HANDLE_COMMANDS)
    fresh = client.open("/x", 0).data
    assert fresh not in (f, d)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackServer, int, int]]:
    base = tmp_path_factory.mktemp("handles")
    with LoopbackServer(root=base / "root", directory=base / "loop", data_size=1 << 20) as srv:
        client = srv.client
        assert client.initialise().ok
        f = client.open("/victim", 2 | 4).data
        assert client.write(f, 0, b"victim content").ok
        d = client.opendir("/").data
        yield srv, f, d


@hypothesis_profile()
@given(
    handle=st.one_of(st.integers(0, U64), st.integers(0, HANDLE_CEILING), st.integers(0, 1 << 13)),
    cmd=st.sampled_from(FILE_HANDLE_COMMANDS + DIR_HANDLE_COMMANDS),
)
def test_random_handles_are_invalid_fd(
    shared: tuple[LoopbackServer, int, int], handle: int, cmd: Command
) -> None:
    server, f, d = shared
    assume(handle not in (f, d))
    client = server.client
    done = wait_all(client, send_many(client, handle_messages(client, handle, 1 << 41, (cmd,))))
    assert (done[1 << 41].status, done[1 << 41].data) == (INVALID_FD, 0)
    assert (server.root / "victim").read_bytes() == b"victim content"
    assert client.telldir(d).data == 0


def test_last_handle_goes_to_the_earlier_open(tmp_path: Path) -> None:
    """Queue order decides who gets the last free handle, even with an open still in flight."""
    (tmp_path / "f").write_bytes(b"")
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        share = bytearray(1 << 16)
        share[0:2] = b"/f"
        share[8:9] = b"/"
        ops = Operations(
            Share(memoryview(share), True),
            HandleTable(limit=1),
            lambda: root_fd,
            lambda: Status.SUCCESS,
            lambda: Status.SUCCESS,
        )
        cmdq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
        cmplq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
        ring = HeldRing(uring.perform)
        engine = fsm.Engine(
            QueuePort(cmdq, cmplq), ops, Executor(ring, uring.perform), lambda: True
        )
        assert cmdq.push(message(1, Command.FILE_OPEN, struct.pack("<QQQ", 0, 2, 0)))
        assert cmdq.push(message(2, Command.DIR_OPEN, struct.pack("<QQ", 8, 1)))
        for _ in range(4):
            engine.pump()
            ring.release()
        statuses = {}
        while (raw := cmplq.pop()) is not None:
            cmd_id, status, _ = struct.unpack_from("<QQQ", raw)
            statuses[cmd_id] = status
        assert statuses == {1: SUCCESS, 2: TOO_MANY_OPEN_FILES}
    finally:
        os.close(root_fd)
