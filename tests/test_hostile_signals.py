"""SIGTERM and SIGINT: the driver stops within a second, exit status 0, and every command is
either answered (with its effect done) or still queued (with no effect) — never half-answered.
A driver started again serves what was left queued.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from pathlib import Path

import pytest
from hostile_helpers import (
    CAPACITY,
    U64,
    assert_no_extra_completions,
    message,
    push_raw,
    stop_and_wait,
)

from vmfs.client import LoopbackServer
from vmfs.wire import Command

SUCCESS = 0
STOP_WITHIN = 10.0  # seconds: a driver still running then is hung (speed is not tested here)
SIGNALS = [signal.SIGTERM, signal.SIGINT]


def started(tmp_path: Path) -> LoopbackServer:
    srv = LoopbackServer(root=tmp_path / "root", directory=tmp_path / "loop")
    assert srv.client.initialise().ok
    return srv


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_idle_driver_stops_at_once(tmp_path: Path, sig: signal.Signals) -> None:
    with started(tmp_path) as srv:
        code, elapsed = stop_and_wait(srv, sig)
        assert code == 0
        assert elapsed < STOP_WITHIN


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_stop_mid_stream_answers_or_leaves_queued(tmp_path: Path, sig: signal.Signals) -> None:
    """The client keeps pipelining writes and DIR_CREATEs while the signal arrives."""
    unit = 4096
    with started(tmp_path) as srv:
        client = srv.client
        assert srv.process is not None
        proc = srv.process
        h = client.open("/data", 2 | 4).data
        first_index = client.cmdq.tail
        kinds: list[tuple[int, str]] = []  # (n, kind) in queue order; the id is n
        signalled: list[float] = []

        def stop() -> None:
            signalled.append(time.monotonic())
            proc.send_signal(sig)

        exited: list[float] = []

        def watch() -> None:
            proc.wait(30)
            exited.append(time.monotonic())

        watcher = threading.Thread(target=watch)
        watcher.start()
        timer = threading.Timer(0.15, stop)
        timer.start()
        n = 0
        try:
            while proc.poll() is None and n < 20_000:
                at = 0x100000 + unit * (n % 512)  # reused only once command n was answered
                if n % 4 == 3:
                    name = f"/m{n:05d}".encode()
                    client.share[at : at + len(name)] = name
                    raw = message(n, Command.DIR_CREATE, struct.pack("<QQ", at, len(name)))
                    kinds.append((n, "mkdir"))
                else:
                    client.share[at : at + unit] = bytes([n % 251 + 1]) * unit
                    body = struct.pack("<QQQQ", h, unit * n, at, unit)
                    raw = message(n, Command.FILE_WRITE, body)
                    kinds.append((n, "write"))
                try:
                    push_raw(client, raw, timeout=2)
                except AssertionError:  # the queue stays full: the driver is gone
                    kinds.pop()
                    break
                n += 1
                if n % 16 == 0:
                    client.signal()
        finally:
            timer.cancel()
        watcher.join()
        code = proc.wait(10)
        srv.process = None
        assert code == 0
        assert signalled and exited and exited[0] - signalled[0] < STOP_WITHIN
        head = client.cmdq.head
        answered = (head - first_index) & U64
        assert 0 < answered <= len(kinds)
        client.collect()
        arrived = client.pending_completions()
        assert sorted(arrived) == sorted(i for i, _ in kinds[:answered]), (
            "published completions must be exactly the commands before the published head"
        )
        assert all(count == 1 for count in arrived.values())
        content = (srv.root / "data").read_bytes()
        for position, (cmd_id, kind) in enumerate(kinds):
            if position < answered:
                done = client.wait(cmd_id, 1)
                assert done.status == SUCCESS, (kind, cmd_id, done)
                if kind == "write":
                    assert done.data == unit
                    chunk = content[unit * cmd_id : unit * (cmd_id + 1)]
                    assert chunk == bytes([cmd_id % 251 + 1]) * unit, cmd_id
                else:
                    assert (srv.root / f"m{cmd_id:05d}").is_dir()
            elif kind == "write":
                assert content[unit * cmd_id : unit * (cmd_id + 1)] in (b"", bytes(unit))
            else:
                assert not (srv.root / f"m{cmd_id:05d}").exists(), cmd_id
        # What stayed queued is served by the next driver, each exactly once.
        srv.start()
        for cmd_id, kind in kinds[answered:]:
            done = client.wait(cmd_id, 20)
            # Handles do not survive the driver: queued writes are refused, never misapplied.
            assert done.status == (SUCCESS if kind == "mkdir" else 4), (cmd_id, kind, done)
        assert_no_extra_completions(client)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_stop_while_stuck_on_a_full_completion_queue(tmp_path: Path, sig: signal.Signals) -> None:
    with started(tmp_path) as srv:
        client = srv.client
        for n in range(CAPACITY + 100):
            push_raw(client, message(n, 25)) if n < CAPACITY else client.cmdq.push(message(n, 25))
            if n == CAPACITY - 1:
                client.signal()
                deadline = time.monotonic() + 10
                while (client.cmplq.tail - client.cmplq.head) & U64 < CAPACITY:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
        client.signal()
        time.sleep(0.1)
        code, elapsed = stop_and_wait(srv, sig)
        assert (code, elapsed < STOP_WITHIN) == (0, True)
        assert (client.cmdq.tail - client.cmdq.head) & U64 == 100  # left queued


def test_stop_while_the_queue_is_corrupt(tmp_path: Path) -> None:
    with started(tmp_path) as srv:
        client = srv.client
        client.cmdq.publish_tail(client.cmdq.head + 10_000)
        client.signal()
        time.sleep(0.1)
        code, elapsed = stop_and_wait(srv, signal.SIGTERM)
        assert (code, elapsed < STOP_WITHIN) == (0, True)


def test_stop_during_a_64_mib_write(tmp_path: Path) -> None:
    with started(tmp_path) as srv:
        client = srv.client
        h = client.open("/huge", 2 | 4).data
        size = len(client.share)
        client.share[:] = os.urandom(1 << 20) * (size >> 20)
        for n in range(3):
            push_raw(
                client, message(n, Command.FILE_WRITE, struct.pack("<QQQQ", h, size * n, 0, size))
            )
        client.signal()
        time.sleep(0.05)
        code, elapsed = stop_and_wait(srv, signal.SIGTERM)
        assert (code, elapsed < STOP_WITHIN) == (0, True)
        client.collect()
        for cmd_id, count in client.pending_completions().items():
            assert count == 1
            done = client.wait(cmd_id, 1)
            assert (done.status, done.data) == (SUCCESS, size), done


def test_signal_storm(tmp_path: Path) -> None:
    """SIGTERM and SIGINT back to back, then more: still one clean stop."""
    with started(tmp_path) as srv:
        assert srv.process is not None
        proc = srv.process
        start = time.monotonic()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            proc.send_signal(sig)
        code = proc.wait(10)
        assert (code, time.monotonic() - start < STOP_WITHIN) == (0, True)
        srv.process = None
        assert "Traceback" not in srv.log()
