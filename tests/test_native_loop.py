"""The native serve loop (csrc/serve.c), driven in-process: it moves requests only along the
request machine's edges, hands every other command back untouched, wakes for signals, and
sleeps when idle."""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vmfs._native import ffi, lib

from vmfs import fsm
from vmfs.client import Client
from vmfs.client.transport import LoopbackClientTransport, create_loopback_dir
from vmfs.driver.process import Driver, Options
from vmfs.uio import LoopbackTransport
from vmfs.wire import PARAMS, Command, OpenFlags, Status


class NativeTransport:
    """A client transport whose waiting runs the in-process driver: the native loop when the
    engine may hand over, else one batch of the Python engine."""

    def __init__(self, inner: Any, driver: Driver) -> None:
        self.inner = inner
        self.driver = driver
        self.command, self.completion, self.data = inner.command, inner.completion, inner.data
        self.reasons: list[int] = []

    def signal(self) -> None:
        self.inner.signal()

    def wait(self, timeout: float | None) -> bool:
        engine = self.driver.engine
        if engine.quiescent():
            self.reasons.append(engine.run_native())
        engine.pump()
        engine.flush()
        engine.pump()
        return True

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Client, Driver, NativeTransport, Path]]:
    yield from serve_in_process(tmp_path)


def serve_in_process(
    tmp_path: Path, root: Path | None = None, bounce: bool = False
) -> Iterator[Any]:
    """An in-process driver whose client's waiting runs the native loop."""
    root = root or tmp_path / "root"
    root.mkdir()
    loop = create_loopback_dir(tmp_path / "loop", data_size=8 << 20)
    transport = LoopbackTransport(loop)
    driver = Driver(transport, Options(root=str(root), bounce=bounce))
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    irq, notify, doorbell = transport.native_signals()
    driver.native.attach_transport(irq, notify, doorbell, wake_r)
    if driver.ring is not None:
        driver.native.attach_ring(driver.ring.native_ring, driver.ring.eventfd())
    driver.native.ctx.idle_ms = 20
    driver.engine.hand_back = True
    native_transport = NativeTransport(LoopbackClientTransport(loop), driver)
    client = Client(native_transport, timeout=5)
    yield client, driver, native_transport, root
    driver.close()
    transport.close()
    client.close_transport()
    os.close(wake_r)
    os.close(wake_w)


def edges() -> set[tuple[int, int, int]]:
    """(from, trigger, to) of every edge of the `transitions` machine itself."""
    machine = fsm.request_machine()
    state = {name: i for i, name in enumerate(machine.states)}
    trigger = {name: i for i, name in enumerate(machine.events)}
    return {
        (state[source], trigger[name], state[t.dest])
        for name, event in machine.events.items()
        for source, ts in event.transitions.items()
        for t in ts
    }


def session(client: Client, root: Path) -> None:
    (root / "data").write_bytes(b"0123456789" * 100)
    assert client.initialise().ok
    opened = client.open("data", OpenFlags.READ_WRITE)
    assert opened.ok
    done, data = client.read(opened.data, 10, 20)
    assert (done.status, data) == (Status.SUCCESS, b"0123456789" * 2)
    assert client.write(opened.data, 1000, b"tail").data == 4
    assert client.size(opened.data).data == 1004
    assert client.stat("data")[1]["size"] == 1004
    assert client.mkdir("sub").ok  # the engine's
    assert client.read(opened.data + 1, 0, 8)[0].status == Status.INVALID_FD  # the engine's
    assert client.close(opened.data).ok


def test_the_loop_serves_the_common_commands_along_the_machine_s_edges(
    served: tuple[Client, Driver, NativeTransport, Path],
) -> None:
    client, driver, transport, root = served
    recorded = driver.native.record_transitions(1000)
    session(client, root)
    ctx = driver.native.ctx
    # open, read, size, stat and close are the loop's; the write too on a memory filesystem
    assert ctx.served >= 5
    made = {
        (word >> 16, (word >> 8) & 0xFF, word & 0xFF)
        for word in (recorded[i] for i in range(ctx.transitions_len))
    }
    assert made and made <= edges()
    # FILE_OPEN, FILE_CLOSE and STAT go through the ring (submit, reap; a STAT's close is its
    # resubmit), the rest is answered at once
    handed = {"take", "answer", "submit", "resubmit", "reap", "publish", "hand_over"}
    assert {trigger for _, trigger, _ in made} == {fsm.T[name] for name in handed}
    assert lib.VMFS_LOOP_PYTHON in transport.reasons  # INITIALISE, the bad read
    counts = driver.counters.by_command
    assert counts[Command.FILE_OPEN][Status.SUCCESS] == 1
    assert counts[Command.FILE_READ][Status.INVALID_FD] == 1


def test_a_table_without_the_answer_edge_stops_the_loop_before_any_completion(
    served: tuple[Client, Driver, NativeTransport, Path],
) -> None:
    client, driver, _, root = served
    (root / "f").write_bytes(b"x")
    assert client.initialise().ok
    table = [nxt for row in fsm.TABLE for nxt in row]
    table[fsm.QUEUED * len(fsm.TRIGGER) + fsm.T["answer"]] = -1
    broken = ffi.new("int8_t[]", table)
    driver.native.ctx.f.table = broken
    before = driver.engine.port.cmpl_tail
    with pytest.raises(fsm.IllegalTransition):
        client.mkdir("d")  # answered at once, along the missing edge
    assert driver.engine.port.cmpl_tail == before


def test_the_loop_returns_for_a_signal_and_sleeps_when_idle(
    served: tuple[Client, Driver, NativeTransport, Path],
) -> None:
    client, driver, _, _ = served
    assert client.initialise().ok
    ctx = driver.native.ctx
    ctx.idle_ms = 300
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    assert driver.engine.run_native() == lib.VMFS_LOOP_IDLE
    waited = time.monotonic() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    assert waited >= 0.25
    assert (used.ru_utime + used.ru_stime) - (cpu.ru_utime + cpu.ru_stime) < 0.5 * waited
    wake = os.pipe2(os.O_NONBLOCK)
    ctx.wake_fd = wake[0]
    os.write(wake[1], b"\0")
    assert driver.engine.run_native() == lib.VMFS_LOOP_WOKEN
    os.close(wake[0])
    os.close(wake[1])


@pytest.mark.parametrize("bounce", [False, True], ids=["share", "device-memory"])
def test_reads_that_would_wait_for_the_disk_overlap_on_the_ring(
    tmp_path: Path, bounce: bool
) -> None:
    """On a disk filesystem, a read of data not in memory goes on io_uring from the loop
    (submit, then reap), several at once. On device memory each lands in a private buffer
    first, and 5 MiB of reads in flight stay within the driver's 4 MiB budget for them."""
    base = Path("/var/tmp")
    assert not lib.vmfs_memory_fs(os.open(base, os.O_PATH)), "need a disk"
    where = Path(tempfile.mkdtemp(dir=base))
    try:
        served = serve_in_process(tmp_path, where / "root", bounce)
        client, driver, _, root = next(served)
        data = os.urandom(80 * 65536)
        (root / "cold").write_bytes(data)
        assert client.initialise().ok
        handle = client.open("cold", OpenFlags.READ_ONLY).data
        fd = os.open(root / "cold", os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        recorded = driver.native.record_transitions(10000)
        bufs = [client.reserve(65536) for _ in range(80)]
        ids = [
            client.send(Command.FILE_READ, PARAMS[Command.FILE_READ].build(read))
            for read in (
                {"fd": handle, "offset": n * 65536, "buf": buf} for n, buf in enumerate(bufs)
            )
        ]
        client.signal()
        answers = []
        for cmd_id, buf in zip(ids, bufs, strict=True):
            done = client.wait(cmd_id)
            assert (done.status, done.data) == (Status.SUCCESS, 65536)
            answers.append(client.take(buf, done.data))
        assert b"".join(answers) == data
        fd = os.open(root / "cold", os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        done, tail = client.read(handle, len(data) - 1000, 65536)  # short: a second read ends it
        assert (done.status, tail) == (Status.SUCCESS, data[-1000:])
        assert client.stat("cold")[0].ok
        made = {
            (word >> 16, (word >> 8) & 0xFF, word & 0xFF)
            for word in (recorded[i] for i in range(driver.native.ctx.transitions_len))
        }
        assert made <= edges()
        triggers = {trigger for _, trigger, _ in made}
        assert {fsm.T["submit"], fsm.T["resubmit"], fsm.T["reap"]} <= triggers
        assert driver.native.ctx.in_flight == 0
        assert driver.native.ctx.bounce_held == 0
        if bounce:
            assert 0 < driver.native.ctx.bounce_peak <= 4 << 20
        next(served, None)
    finally:
        shutil.rmtree(where, ignore_errors=True)
