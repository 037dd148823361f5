"""The native serve loop (csrc/serve.c), driven in-process: it moves requests only along the
request machine's edges, hands every other command back untouched, wakes for signals, and
sleeps when idle."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vmfs._native import ffi, lib

from vmfs import fsm
from vmfs.client import Client
from vmfs.client_transport import LoopbackClientTransport, create_loopback_dir
from vmfs.driver import Driver, Options
from vmfs.uio import LoopbackTransport
from vmfs.wire import Command, OpenFlags, Status


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
    root = tmp_path / "root"
    root.mkdir()
    loop = create_loopback_dir(tmp_path / "loop", data_size=1 << 20)
    transport = LoopbackTransport(loop)
    driver = Driver(transport, Options(root=str(root)))
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    irq, notify, doorbell = transport.native_signals()
    driver.native.attach_transport(irq, notify, doorbell, wake_r)
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
    assert {trigger for _, trigger, _ in made} == {fsm.T["take"], fsm.T["answer"], fsm.T["publish"]}
    assert lib.VMFS_LOOP_PYTHON in transport.reasons  # INITIALISE, DIR_CREATE, the bad read
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
    before = driver.engine.cmpl_tail
    with pytest.raises(fsm.IllegalTransition):
        client.stat("f")
    assert driver.engine.cmpl_tail == before


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
