"""Crash and restart: kill -9 mid-stream, and a command that kills the driver (a poison command).

After a restart on the same loopback directory the driver serves what is still queued, answers
every command exactly once over both lives, never runs a command twice, and answers an
interrupted command ERROR instead of running it again (docs/protocol.md "Restarts"). Re-running
would be visible: DIR_CREATE run twice answers ALREADY_EXISTS, a RENAME chain run twice answers
NO_FILE, and an interrupted poison command would kill the restarted driver again.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_helpers import (
    CAPACITY,
    U64,
    assert_no_extra_completions,
    message,
    push_raw,
)

from vmfs.client import Client, Completion, LoopbackServer
from vmfs.driver.process import CRASH_EXIT_CODE, CRASH_ON_ID_VARIABLE
from vmfs.wire import Command

SUCCESS, ERROR, INVALID_FD, NO_FILE, ALREADY_EXISTS = 0, 1, 4, 15, 17
POISON = 0xDEAD_BEEF


@pytest.fixture
def poisoned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    """A driver (and every restart of it) that dies when it starts command id POISON."""
    monkeypatch.setenv(CRASH_ON_ID_VARIABLE, str(POISON))
    with LoopbackServer(root=tmp_path / "root", directory=tmp_path / "loop") as srv:
        assert srv.client.initialise().ok
        yield srv


def write_path(client: Client, at: int, path: bytes) -> tuple[int, int]:
    client.share[at : at + len(path)] = path
    return at, len(path)


def mkdir_message(client: Client, cmd_id: int, path: bytes, at: int) -> bytes:
    return message(cmd_id, Command.DIR_CREATE, struct.pack("<QQ", *write_path(client, at, path)))


def wait_exit(server: LoopbackServer, timeout: float = 10.0) -> int:
    assert server.process is not None
    code = server.process.wait(timeout)
    server.process = None
    return code


def collect_all(client: Client, ids: list[int], timeout: float = 30.0) -> dict[int, Completion]:
    done = {}
    for cmd_id in ids:
        done[cmd_id] = client.wait(cmd_id, timeout)
    return done


def test_poison_command_is_answered_error_and_skipped(poisoned: LoopbackServer) -> None:
    client = poisoned.client
    names = [b"/a", b"/b", b"/poisoned", b"/d"]
    ids = [1, 2, POISON, 4]
    for n, (cmd_id, name) in enumerate(zip(ids, names, strict=True)):
        push_raw(client, mkdir_message(client, cmd_id, name, 0x10000 + 64 * n))
    client.signal()
    assert wait_exit(poisoned) == CRASH_EXIT_CODE
    poisoned.start()  # same loopback directory, same poison: a re-run would kill it again
    done = collect_all(client, ids)
    assert [done[i].status for i in ids] == [SUCCESS, SUCCESS, ERROR, SUCCESS]
    assert done[POISON].data == 0
    assert sorted(os.listdir(poisoned.root)) == ["a", "b", "d"]
    # It keeps serving (still initialised: docs/protocol.md "Restarts"), nothing answered twice.
    assert client.mkdir("/e").ok
    assert_no_extra_completions(client)
    assert poisoned.process is not None and poisoned.process.poll() is None
    assert "interrupted by a driver restart" in poisoned.log()


def test_poison_first_in_a_full_queue(poisoned: LoopbackServer) -> None:
    """The poison leads 510 queued commands; every one of them is still served after restart."""
    client = poisoned.client
    ids = [POISON, *range(1000, 1000 + CAPACITY - 1)]
    for n, cmd_id in enumerate(ids):
        push_raw(client, mkdir_message(client, cmd_id, f"/q{n:04d}".encode(), 0x10000 + 16 * n))
    client.signal()
    assert wait_exit(poisoned) == CRASH_EXIT_CODE
    poisoned.start()
    done = collect_all(client, ids)
    assert done[POISON].status == ERROR
    assert all(done[i].status == SUCCESS for i in ids[1:])
    assert len(os.listdir(poisoned.root)) == CAPACITY - 1
    assert_no_extra_completions(client)


def test_poison_on_a_file_write_in_flight(poisoned: LoopbackServer) -> None:
    client = poisoned.client
    h = client.open("/w", 2 | 4).data
    data = client.put(b"x" * 4096)
    raws = [
        message(n, Command.FILE_WRITE, struct.pack("<QQQQ", h, 4096 * n, data["offset"], 4096))
        for n in range(5)
    ]
    raws.insert(3, message(POISON, Command.FILE_SIZE, struct.pack("<Q", h)))
    for raw in raws:
        push_raw(client, raw)
    client.signal()
    assert wait_exit(poisoned) == CRASH_EXIT_CODE
    poisoned.start()
    done = collect_all(client, [0, 1, 2, POISON, 3, 4])
    assert [done[i].status for i in (0, 1, 2)] == [SUCCESS] * 3
    assert done[POISON].status == ERROR
    assert [done[i].status for i in (3, 4)] == [INVALID_FD] * 2  # handles die with the process
    assert (poisoned.root / "w").read_bytes() == b"x" * (3 * 4096)
    assert_no_extra_completions(client)


class Stream:
    """A pipelined stream whose commands would show any second execution."""

    def __init__(self, server: LoopbackServer) -> None:
        self.server = server
        self.client = server.client
        self.kinds: dict[int, tuple[str, int]] = {}
        self.renames = 0
        self.n = 0
        self.handle = self.reopen()
        assert self.client.mkdir("/m").ok
        chain = self.client.open("/c0000", 2 | 4).data
        assert self.client.write(chain, 0, b"the chain's payload").ok
        assert self.client.close(chain).ok

    def reopen(self) -> int:
        opened = self.client.open("/log", 2 | 4)
        assert opened.ok
        return opened.data

    def push_next(self) -> None:
        n = self.n
        self.n += 1
        cmd_id = (1 << 40) + n
        at = 0x100000 + 64 * (n % 4096)
        kind = n % 3
        if kind == 0:
            raw = mkdir_message(self.client, cmd_id, f"/m/d{n:06d}".encode(), at)
            self.kinds[cmd_id] = ("mkdir", n)
        elif kind == 1:
            k = self.renames
            self.renames += 1
            old = f"/c{k:04d}".encode()
            new = f"/c{k + 1:04d}".encode()
            write_path(self.client, at, old)
            write_path(self.client, at + 32, new)
            body = struct.pack("<QQQQ", at, len(old), at + 32, len(new))
            raw = message(cmd_id, Command.RENAME, body)
            self.kinds[cmd_id] = ("rename", k)
        else:
            record = struct.pack("<Q", n)
            self.client.share[at : at + 8] = record
            body = struct.pack("<QQQQ", self.handle, 8 * n, at, 8)
            raw = message(cmd_id, Command.FILE_WRITE, body)
            self.kinds[cmd_id] = ("write", n)
        push_raw(self.client, raw)


def kill_stream(tmp_path: Path, total: int, kills: int, seed: int) -> dict[str, int]:
    """Pipeline `total` commands, kill -9 the driver `kills` times at random points, restart it
    each time, and check every command's outcome. Returns what happened, for the record."""
    rng = random.Random(seed)
    kill_points = sorted(rng.sample(range(300, total - 100), kills))
    with LoopbackServer(root=tmp_path / "root", directory=tmp_path / "loop") as srv:
        client = srv.client
        assert client.initialise().ok
        stream = Stream(srv)
        arrived: Counter[int] = Counter()
        done: dict[int, Completion] = {}

        def drain() -> None:
            client.collect()
            for cmd_id in list(client.pending_completions()):
                if cmd_id in stream.kinds:
                    got = client.wait(cmd_id, 1)
                    arrived[cmd_id] += 1
                    done[cmd_id] = got

        for point in kill_points:
            while stream.n < point:
                stream.push_next()
                if stream.n % 64 == 0:
                    client.signal()
                    drain()
            client.signal()
            time.sleep(rng.uniform(0, 0.01))
            assert srv.process is not None
            srv.process.send_signal(signal.SIGKILL)
            assert wait_exit(srv) == -signal.SIGKILL
            for _ in range(rng.randrange(0, 50)):  # the client keeps queueing while it is down
                if (client.cmdq.tail - client.cmdq.head) & U64 < CAPACITY:
                    stream.push_next()
            srv.start()
            stream.handle = stream.reopen()
        while stream.n < total:
            stream.push_next()
            if stream.n % 64 == 0:
                client.signal()
                drain()
        client.signal()
        deadline = time.monotonic() + 60
        while len(done) < total and time.monotonic() < deadline:
            drain()
            client.transport.wait(0.05)
        drain()

        assert set(done) == set(stream.kinds), "every command answered"
        assert max(arrived.values()) == 1, "a command was answered twice"
        assert_no_extra_completions(client)
        root = srv.root
        interrupted = 0
        for cmd_id, (kind, n) in stream.kinds.items():
            status = done[cmd_id].status
            if status == ERROR:
                interrupted += 1
            if kind == "mkdir":
                assert status in (SUCCESS, ERROR), (n, done[cmd_id])  # never ALREADY_EXISTS
                if status == SUCCESS:
                    assert (root / "m" / f"d{n:06d}").is_dir()
                else:
                    assert done[cmd_id].data == 0
            elif kind == "write":
                assert status in (SUCCESS, INVALID_FD, ERROR), (n, done[cmd_id])
                record = (root / "log").read_bytes()[8 * n : 8 * n + 8]
                if status == SUCCESS:
                    assert done[cmd_id].data == 8 and record == struct.pack("<Q", n)
                elif status == INVALID_FD:
                    assert record in (b"", bytes(8)), "a refused write reached the file"
        mkdirs_done = {n for cmd_id, (k, n) in stream.kinds.items() if k == "mkdir"}
        made = {int(name[1:]) for name in os.listdir(root / "m")}
        assert made <= mkdirs_done
        # The rename chain: the file sits at exactly one link; every rename before it happened,
        # no SUCCESS after it.
        chain = sorted(p for p in os.listdir(root) if p.startswith("c"))
        assert len(chain) == 1, chain
        at = int(chain[0][1:])
        assert (root / chain[0]).read_bytes() == b"the chain's payload"
        for cmd_id, (kind, k) in stream.kinds.items():
            if kind == "rename":
                status = done[cmd_id].status
                if k < at:
                    assert status in (SUCCESS, ERROR), (k, at, done[cmd_id])
                else:
                    assert status in (NO_FILE, ERROR), (k, at, done[cmd_id])
        assert interrupted <= kills * CAPACITY
        assert srv.process is not None and srv.process.poll() is None
        statuses = Counter(done[i].status for i in stream.kinds)
        return {
            "commands": total,
            "kills": kills,
            "answered": len(done),
            "max_completions_per_id": max(arrived.values()),
            "interrupted_error": interrupted,
            "renames_done": at,
            **{f"status_{k}": v for k, v in sorted(statuses.items())},
        }


def test_kill_9_mid_stream_then_restart(tmp_path: Path) -> None:
    outcome = kill_stream(tmp_path, total=2400, kills=4, seed=9)
    assert outcome["answered"] == 2400


def test_kill_9_with_the_completion_queue_full(tmp_path: Path) -> None:
    with LoopbackServer(root=tmp_path / "root", directory=tmp_path / "loop") as srv:
        client = srv.client
        assert client.initialise().ok
        ids = list(range(700))
        for n in ids[:CAPACITY]:
            assert client.cmdq.push(
                mkdir_message(client, n, f"/k{n:03d}".encode(), 0x10000 + 16 * n)
            )
        client.signal()
        deadline = time.monotonic() + 10
        while (client.cmplq.tail - client.cmplq.head) & U64 < CAPACITY:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for n in ids[CAPACITY:]:
            assert client.cmdq.push(
                mkdir_message(client, n, f"/k{n:03d}".encode(), 0x10000 + 16 * n)
            )
        client.signal()
        time.sleep(0.1)
        assert srv.process is not None
        srv.process.send_signal(signal.SIGKILL)
        wait_exit(srv)
        srv.start()
        done = collect_all(client, ids)
        assert all(d.status == SUCCESS for d in done.values())
        assert len(os.listdir(srv.root)) == 700
        assert_no_extra_completions(client)


def test_handles_of_the_previous_life_are_not_reissued(tmp_path: Path) -> None:
    """A client may still hold handles from before the crash: they must fail, not reach
    whatever the restarted driver opened under the same number."""
    with LoopbackServer(root=tmp_path / "root", directory=tmp_path / "loop") as srv:
        client = srv.client
        assert client.initialise().ok
        old = [client.open(f"/old{n}", 2 | 4).data for n in range(20)]
        old_dir = client.opendir("/").data
        assert srv.process is not None
        srv.process.send_signal(signal.SIGKILL)
        wait_exit(srv)
        srv.start()
        new = [client.open(f"/new{n}", 2 | 4).data for n in range(20)]
        assert not set(new) & {*old, old_dir}, "a handle value from before the crash reissued"
        for handle in old:
            assert client.write(handle, 0, b"stale").status == INVALID_FD
        assert all((srv.root / f"new{n}").read_bytes() == b"" for n in range(20))
        assert_no_extra_completions(client)
