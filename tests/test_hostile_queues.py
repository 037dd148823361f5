"""Queue indices the client corrupts, and a completion queue the client stops draining.

docs/protocol.md "Queue layout": a command queue whose length exceeds 511 is treated as empty,
a completion queue whose length exceeds 511 as full; the driver logs, does not crash, spin or
overrun, never takes a command without a free completion slot, and resumes when the indices are
sane again.
The driver's CPU time (from /proc) shows whether it sleeps while it cannot make progress.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hostile_helpers import (
    CAPACITY,
    U64,
    HeldRing,
    assert_no_extra_completions,
    cpu_seconds,
    message,
    params,
    push_raw,
    rss_bytes,
    send_many,
    wait_all,
)

from vmfs import fsm
from vmfs.client import Client, LoopbackServer
from vmfs.driver.executor import Executor
from vmfs.driver.queueport import QueuePort
from vmfs.wire import QUEUE_REGION_SIZE, Command, QueueView

SUCCESS, INVALID_COMMAND = 0, 13
IDLE_CPU_LIMIT = 0.3  # seconds of CPU over ~1 s of a client hammering a stuck queue


def hammer(client: Client, seconds: float = 1.0) -> None:
    """Keep ringing the doorbell, as a confused client might, without fixing anything."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.signal()
        time.sleep(0.005)


def cpu_while_stuck(server: LoopbackServer) -> float:
    assert server.process is not None
    pid = server.process.pid
    before = cpu_seconds(pid)
    hammer(server.client)
    return cpu_seconds(pid) - before


def stat_root(client: Client, cmd_id: int) -> bytes:
    path = client.put(b"/")
    out = client.reserve(4096)
    return message(cmd_id, Command.STAT, params(Command.STAT, path=path, buf=out))


def assert_serving(client: Client) -> None:
    done, _ = client.stat("/")
    assert done.ok, done
    assert_no_extra_completions(client)


@pytest.mark.parametrize(
    "bad_tail",
    [
        lambda head: head + CAPACITY + 1,  # one past capacity
        lambda head: head + 1_000_000,
        lambda head: (head - 1) & U64,  # moved back behind the head
    ],
    ids=["capacity+1", "far-ahead", "back-1"],
)
def test_corrupt_command_tail_is_ignored_then_recovered(
    client: Client, server: LoopbackServer, bad_tail: Any
) -> None:
    assert_serving(client)
    head = client.cmdq.head
    assert client.cmdq.tail == head
    completions_before = client.cmplq.tail
    # Fill the slots with valid commands so that taking any of them would be visible.
    probe = stat_root(client, 0)[8:]
    for n in range(CAPACITY):
        client.cmdq.write_slot(head + n, struct.pack("<Q", 7000 + n) + probe)
    client.cmdq.publish_tail(bad_tail(head))
    assert cpu_while_stuck(server) < IDLE_CPU_LIMIT
    assert client.cmplq.tail == completions_before, "a corrupt queue was consumed"
    assert client.cmdq.head == head
    assert "command queue corrupt" in server.log()
    assert server.process is not None and server.process.poll() is None
    client.cmdq.publish_tail(head)  # the client comes back to its senses
    client.signal()
    assert_serving(client)


@pytest.mark.parametrize(
    "bad_head",
    [lambda tail: tail + 1, lambda tail: (tail - CAPACITY - 1) & U64],
    ids=["ahead-1", "behind-512"],
)
def test_corrupt_completion_head_means_full(
    client: Client, server: LoopbackServer, bad_head: Any
) -> None:
    assert_serving(client)
    tail = client.cmplq.tail
    head = client.cmplq.head
    client.cmplq.publish_head(bad_head(tail))
    push_raw(client, stat_root(client, 4242))
    client.signal()
    assert cpu_while_stuck(server) < IDLE_CPU_LIMIT
    assert client.cmplq.tail == tail, "a completion was written into a corrupt queue"
    assert "completion queue corrupt" in server.log()
    client.cmplq.publish_head(head)
    client.signal()
    done = client.wait(4242)
    assert done.status == SUCCESS
    assert_serving(client)


def test_full_completion_queue_not_drained(client: Client, server: LoopbackServer) -> None:
    """511 answered, 200 more waiting: the driver sleeps, holds memory, then resumes."""
    assert server.process is not None
    pid = server.process.pid
    rss_before = rss_bytes(pid)
    path = client.put(b"/")
    out = client.reserve(4096)
    body = params(Command.STAT, path=path, buf=out)
    first = [message(10_000 + n, Command.STAT, body) for n in range(CAPACITY)]
    later = [message(20_000 + n, Command.STAT, body) for n in range(200)]
    for raw in first:
        assert client.cmdq.push(raw)
    client.signal()
    deadline = time.monotonic() + 10
    while (client.cmplq.tail - client.cmplq.head) & U64 < CAPACITY:
        assert time.monotonic() < deadline, "the first 511 were not answered"
        time.sleep(0.01)
    for raw in later:
        assert client.cmdq.push(raw)
    head_before = client.cmdq.head
    assert cpu_while_stuck(server) < IDLE_CPU_LIMIT
    assert (client.cmplq.tail - client.cmplq.head) & U64 == CAPACITY, "completion queue overrun"
    assert client.cmdq.head == head_before, "took commands without a free completion slot"
    assert (client.cmdq.tail - client.cmdq.head) & U64 == 200
    assert "completion queue full" in server.log()
    assert rss_bytes(pid) - rss_before < 32 << 20
    # The client drains without ringing (LionsOS clients never do): the driver still resumes.
    client.collect()
    done = wait_all(client, [20_000 + n for n in range(200)], timeout=10)
    assert all(d.status == SUCCESS for d in done.values())
    done = wait_all(client, [10_000 + n for n in range(CAPACITY)], timeout=1)
    assert all(d.status == SUCCESS for d in done.values())
    assert_serving(client)


def test_indices_near_2_64_wrap(tmp_path: Any) -> None:
    """Indices start where the client left them (never reset), here just below 2^64."""
    start = U64 - 2
    with LoopbackServer(root=tmp_path / "root", directory=tmp_path / "loop", start=False) as srv:
        client = srv.client
        for q in (client.cmdq, client.cmplq):
            q.publish_head(start)
            q.publish_tail(start)
        srv.start()
        assert client.initialise().ok  # index 2^64 - 3
        ids = send_many(client, [message(100 + n, 20 + n) for n in range(2)])  # up to 2^64 - 1
        assert all(d.status == INVALID_COMMAND for d in wait_all(client, ids).values())
        assert client.cmdq.head == 0 and client.cmplq.tail == 0
        ids = send_many(client, [message(200 + n, 20 + n) for n in range(600)])
        assert all(d.status == INVALID_COMMAND for d in wait_all(client, ids).values())
        assert_serving(client)


def test_burst_across_2_64_survives(tmp_path: Any) -> None:
    """A burst crossing 2^64 at once makes the client overwrite its own slots (index mod 511
    collides across the wrap); the driver must still answer each index once and keep going."""
    start = U64 - 5
    with LoopbackServer(root=tmp_path / "root", directory=tmp_path / "loop", start=False) as srv:
        client = srv.client
        for q in (client.cmdq, client.cmplq):
            q.publish_head(start)
            q.publish_tail(start)
        srv.start()
        assert client.initialise().ok
        for n in range(40):
            push_raw(client, message(300 + n, 20))
        client.signal()
        deadline = time.monotonic() + 10
        received = 0
        while received < 40 and time.monotonic() < deadline:
            received += client.collect()
            client.transport.wait(0.05)
        assert received == 40, "every index gets one completion"
        assert srv.process is not None and srv.process.poll() is None
        for cmd_id, count in client.pending_completions().items():
            for _ in range(count):
                client.wait(cmd_id)
        assert_serving(client)


# -- the engine alone, with a ring whose completions the test releases -------------------------


class CountingOps:
    """Every command is one asynchronous call; records which ids were run."""

    def __init__(self) -> None:
        self.ran: list[int] = []
        self.table = {cmd: self.run for cmd in range(20)}

    def claims(self, req: Any) -> tuple[Any, ...]:
        return ()

    def run(self, req: Any) -> Iterator[tuple[Any, ...]]:
        self.ran.append(req.id)
        yield ("call", req.id)
        req.finish(SUCCESS, 0)


def make_engine(start: int = 0) -> tuple[fsm.Engine, QueueView, QueueView, CountingOps, HeldRing]:
    cmdq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
    cmplq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
    for q in (cmdq, cmplq):
        q.publish_head(start)
        q.publish_tail(start)
    ops, ring = CountingOps(), HeldRing()
    engine = fsm.Engine(QueuePort(cmdq, cmplq), ops, Executor(ring, lambda call: 0), lambda: True)
    return engine, cmdq, cmplq, ops, ring


def drain(cmplq: QueueView) -> list[int]:
    ids = []
    while (message_bytes := cmplq.pop()) is not None:
        ids.append(struct.unpack_from("<Q", message_bytes)[0])
    return ids


def test_tail_moved_back_under_in_flight_commands_takes_nothing() -> None:
    engine, cmdq, cmplq, ops, ring = make_engine()
    for n in range(3):
        assert cmdq.push(message(n, Command.FILE_SIZE))
    engine.pump()
    assert ops.ran == [0, 1, 2] and len(ring.in_flight) == 3
    cmdq.publish_tail(1)  # behind what the driver already took, not behind its head
    engine.pump()
    assert ops.ran == [0, 1, 2], "took slots the client never published"
    ring.release()
    engine.pump()
    cmdq.publish_tail(3)
    assert cmdq.push(message(3, Command.FILE_SIZE))
    engine.pump()
    ring.release()
    engine.pump()
    assert ops.ran == [0, 1, 2, 3]
    assert sorted(drain(cmplq)) == [0, 1, 2, 3]


def test_wrap_with_commands_in_flight_never_reuses_a_slot() -> None:
    engine, cmdq, cmplq, ops, ring = make_engine(start=U64 - 1)  # indices 2^64-2, 2^64-1
    for n in range(2):
        assert cmdq.push(message(n, Command.FILE_SIZE))
    engine.pump()
    assert len(ring.in_flight) == 2
    # The client publishes indices 0 and 1 of the next lap: slots 0 and 1 of the driver's
    # requests for 2^64-2 and 2^64-1 (2^64 mod 511 == 2) are still busy.
    for n in (2, 3):
        cmdq.write_slot(cmdq.tail, message(n, Command.FILE_SIZE))
        cmdq.publish_tail(cmdq.tail + 1)
    engine.pump()  # must neither crash nor take them yet
    assert ops.ran == [0, 1]
    ring.release()
    engine.pump()
    engine.pump()  # completions for 0 and 1 sit in slots 0 and 1 until the client takes them
    assert ops.ran == [0, 1]
    assert drain(cmplq) == [0, 1]
    for _ in range(3):
        engine.pump()
        ring.release()
    assert ops.ran == [0, 1, 2, 3]
    assert sorted(drain(cmplq)) == [2, 3]
    assert cmdq.head == 2
