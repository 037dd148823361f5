"""`vmfs serve` as a subprocess, real io_uring, the client over the loopback transport."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vmfs.client import Client, LoopbackServer
from vmfs.wire import Command, Status, build_params


def test_every_command_once(client: Client, server: LoopbackServer) -> None:
    seen: set[int] = set()
    original = client.send

    def counting_send(cmd: int, params: bytes = b"", cmd_id: int | None = None) -> int:
        seen.add(cmd)
        return original(cmd, params, cmd_id)

    client.send = counting_send  # type: ignore[method-assign]
    assert client.mkdir("/d").ok
    h = client.open("/d/f", 2 | 4).data
    assert client.write(h, 0, b"abc").data == 3
    assert client.read(h, 0, 3)[1] == b"abc"
    assert client.size(h).data == 3 and client.truncate(h, 1).ok and client.sync(h).ok
    assert client.close(h).ok
    assert client.stat("/d/f")[1]["size"] == 1  # type: ignore[index]
    d = client.opendir("/d").data
    assert client.readdir(d)[1] == b"f" and client.telldir(d).data == 1
    assert client.seekdir(d, 0).ok and client.rewinddir(d).ok and client.closedir(d).ok
    assert client.rename("/d/f", "/d/g").ok and client.remove("/d/g").ok and client.rmdir("/d").ok
    assert client.deinitialise().ok and client.initialise().ok
    assert seen == set(Command)
    assert client.pending_completions() == {}


def test_pipelined_mixed_batches_one_completion_per_id(client: Client) -> None:
    handles = [client.open(f"/f{i}", 2 | 4).data for i in range(8)]
    payload = client.put(os.urandom(8192))
    outs = [client.reserve(8192) for _ in handles]
    ids = []
    for round_ in range(20):
        for i, h in enumerate(handles):
            ids.append(
                client.send(
                    Command.FILE_WRITE,
                    build_params(Command.FILE_WRITE, fd=h, offset=round_ * 8192, buf=payload),
                )
            )
            ids.append(
                client.send(
                    Command.FILE_READ,
                    build_params(Command.FILE_READ, fd=h, offset=round_ * 8192, buf=outs[i]),
                )
            )
        with client.path_buffers("/") as (root,):
            ids.append(client.send(Command.DIR_OPEN, build_params(Command.DIR_OPEN, path=root)))
            client.signal()
            results = [client.wait(i) for i in ids]
        ids.clear()
        assert all(r.ok for r in results), results
        reads = results[1:-1:2]
        assert all(r.data == 8192 for r in reads)
        assert client.closedir(results[-1].data).ok
    assert all(client.take(out, 8192) == client.take(payload, 8192) for out in outs)
    assert client.pending_completions() == {}


def test_commands_queued_before_the_driver_starts_are_served(tmp_path: Path) -> None:
    with LoopbackServer(root=tmp_path / "r", directory=tmp_path / "l", start=False) as srv:
        c = srv.client
        init = c.send(Command.INITIALISE)
        with c.path_buffers("/early") as (p,):
            mk = c.send(Command.DIR_CREATE, build_params(Command.DIR_CREATE, path=p))
            c.signal()
            srv.start()
            assert c.wait(init).ok and c.wait(mk).ok
        assert (tmp_path / "r" / "early").is_dir()


def test_sigterm_exits_zero_within_a_second(server: LoopbackServer) -> None:
    assert server.client.initialise().ok
    assert server.process is not None
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=5)
    assert code == 0 and time.monotonic() - started < 1.0
    assert "stopped" in server.log() and "commands completed: 1" in server.log()


def test_start_line_names_root_ring_and_opcodes(server: LoopbackServer) -> None:
    assert server.client.initialise().ok
    log = server.log()
    assert f"vmfs serving {server.root}" in log
    assert "io_uring 1024 entries" in log and "read" in log


def test_no_uring_mode_serves_the_same(tmp_path: Path) -> None:
    with LoopbackServer(tmp_path / "r", tmp_path / "l", extra_args=["--no-uring"]) as srv:
        c = srv.client
        assert c.initialise().ok and c.mkdir("/x").ok and c.listdir("/") == [b"x"]
        assert "io_uring off" in srv.log()


def test_help_explains_itself() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vmfs", "serve", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for option in ("--loopback", "--root", "--no-uring", "--block-device"):
        assert option in out.stdout


def test_bad_loopback_dir_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vmfs", "serve", "--loopback", str(tmp_path), "--root", "."],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "vmfs_config" in out.stderr


def test_sigusr1_prints_counters_and_keeps_serving(client: Client, server: LoopbackServer) -> None:
    assert client.mkdir("/counted").ok
    assert client.stat("/nope")[0].status == Status.NO_FILE
    assert server.process is not None
    server.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while "DIR_CREATE: SUCCESS=1" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()
    assert "DIR_CREATE: SUCCESS=1" in log and "STAT: NO_FILE=1" in log
    assert "latency" in log and "batch sizes" in log
    assert client.stat("/counted")[0].ok and server.process.poll() is None
