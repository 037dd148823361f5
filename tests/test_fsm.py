"""The request machine: compiled table == transitions machine; ordering holds for any batch."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transitions import MachineError

from vmfs import fsm
from vmfs.driver.executor import Executor
from vmfs.driver.ordering import ANY_FILE, NAMESPACE
from vmfs.driver.queueport import QueuePort
from vmfs.driver.request import Request
from vmfs.wire import QUEUE_REGION_SIZE, Command, QueueView, Status, build_command


class Model:
    state: str


def test_table_agrees_with_machine_on_every_state_and_trigger() -> None:
    """For every (state, trigger): the table's answer is what the transitions machine does."""
    checked = 0
    for state, trigger in itertools.product(fsm.REQUEST_STATES, fsm.TRIGGER):
        model = Model()
        machine = fsm.request_machine(model)
        machine.set_state(state, model)
        req = Request()
        req.state = fsm.STATE[state]
        try:
            model.trigger(trigger)
            expected = fsm.STATE[model.state]
        except MachineError:
            expected = None
        try:
            fsm.fire(req, fsm.TRIGGER[trigger])
            got = req.state
        except fsm.IllegalTransition:
            got = None
        assert got == expected, (state, trigger)
        checked += 1
    assert checked == len(fsm.REQUEST_STATES) * len(fsm.TRIGGER)


def test_lifecycle_edges_exist() -> None:
    """The paths the design names: queued→submitted→completed and queued→barrier_wait→completed."""
    s, t = fsm.STATE, fsm.TRIGGER
    assert fsm.TABLE[s["queued"]][t["submit"]] == s["submitted"]
    assert fsm.TABLE[s["submitted"]][t["reap"]] == s["completed"]
    assert fsm.TABLE[s["queued"]][t["hold"]] == s["barrier_wait"]
    assert fsm.TABLE[s["barrier_wait"]][t["run"]] == s["completed"]
    assert fsm.TABLE[s["completed"]][t["submit"]] == -1


# ---------------------------------------------------------------------------------------------
# Ordering with a fake executor: io_uring may finish submitted calls in any order.

READ, WRITE, STAT, RENAME, BARRIER = "read", "write", "stat", "rename", "barrier"
KIND_TYPE = {
    READ: Command.FILE_READ,
    WRITE: Command.FILE_WRITE,
    STAT: Command.STAT,
    RENAME: Command.RENAME,
    BARRIER: Command.DIR_OPEN,
}


class FakeOps:
    """Commands whose params say what they touch: (file, first byte, length)."""

    def __init__(self, log: list[tuple[str, int]]) -> None:
        self.log = log
        self.table = {int(cmd): self.run for cmd in Command}

    def claims(self, req: Request) -> Any:
        cmd, p = req.cmd, req.params
        if cmd == Command.FILE_READ or cmd == Command.FILE_WRITE:
            return ((p[0], p[1], p[1] + p[3], cmd == Command.FILE_WRITE),)
        if cmd == Command.STAT:
            return ((NAMESPACE, 0, 1, False), (ANY_FILE, 0, 1 << 64, False))
        if cmd == Command.RENAME:
            return ((NAMESPACE, 0, 1, True),)
        return None

    def run(self, req: Request) -> Any:
        yield ("call", req.index)
        req.finish(Status.SUCCESS, req.index)


class FakeRing:
    """Holds submitted calls and finishes them in an order the test chooses."""

    def __init__(self, log: list[tuple[str, int]], choose: Any) -> None:
        self.log = log
        self.choose = choose
        self.waiting: list[int] = []

    def submit_call(self, call: tuple[Any, ...], tag: int) -> Any:
        self.log.append(("start", call[1]))
        self.waiting.append(call[1])
        return True

    def submit(self) -> int:
        return 0

    def wait(self, count: int = 1) -> None:
        self._forced = True

    def reap(self) -> list[tuple[int, int]]:
        if not self.waiting:
            return []
        forced = getattr(self, "_forced", False)
        self._forced = False
        picks = self.choose(len(self.waiting), forced)
        done = [self.waiting[i] for i in sorted(set(picks), reverse=True)]
        for index in done:
            self.waiting.remove(index)
            self.log.append(("end", index))
        return [(index % 511, 0) for index in done]


def conflicts(a: tuple[str, int, int, int], b: tuple[str, int, int, int]) -> bool:
    (ka, fa, la, na), (kb, fb, lb, nb) = a, b
    if BARRIER in (ka, kb):
        return True
    files = {READ, WRITE}
    if ka in files and kb in files:
        return fa == fb and (WRITE in (ka, kb)) and la < lb + nb and lb < la + na
    if STAT in (ka, kb) and WRITE in (ka, kb):
        return True
    return RENAME in (ka, kb) and {ka, kb} & {STAT, RENAME} == {ka, kb}


ops_strategy = st.tuples(
    st.sampled_from([READ, WRITE, STAT, RENAME, BARRIER]),
    st.integers(0, 2),
    st.integers(0, 3).map(lambda x: x * 10),
    st.integers(1, 15),
)


@settings(max_examples=150, deadline=None)
@given(batch=st.lists(ops_strategy, min_size=1, max_size=40), data=st.data())
def test_conflicting_requests_never_overlap(batch: list[Any], data: st.DataObject) -> None:
    log: list[tuple[str, int]] = []

    def choose(n: int, forced: bool) -> list[int]:
        picks = data.draw(st.lists(st.integers(0, n - 1), max_size=n))
        return picks or ([0] if forced else [])

    cmdq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
    cmplq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
    for i, (kind, key, first, length) in enumerate(batch):
        params = b"".join(v.to_bytes(8, "little") for v in (key, first, 0, length))
        assert cmdq.push(build_command(1000 + i, KIND_TYPE[kind], params))
    ring = FakeRing(log, choose)

    def perform(call: tuple[Any, ...]) -> int:
        log.append(("start", call[1]))
        log.append(("end", call[1]))
        return 0

    engine = fsm.Engine(QueuePort(cmdq, cmplq), FakeOps(log), Executor(ring, perform), lambda: True)
    for _ in range(200):
        engine.pump()
        if not engine.in_flight and engine.port.head == len(batch):
            break
        engine.flush()
    position = {event: n for n, event in enumerate(log)}
    for a, b in itertools.combinations(range(len(batch)), 2):
        if conflicts(batch[a], batch[b]):
            assert position[("end", a)] < position[("start", b)], (batch[a], batch[b], log)
    ids = [cmplq.pop() for _ in range(len(batch))]
    assert cmplq.pop() is None
    assert sorted(int.from_bytes(m[:8], "little") for m in ids if m) == [
        1000 + i for i in range(len(batch))
    ]


def test_engine_respects_free_completion_slots() -> None:
    """Never take a command without a completion slot for it (docs/protocol.md "Queue layout")."""
    cmdq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
    cmplq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
    cmplq.publish_tail(500)  # 500 completions the client has not consumed
    for i in range(20):
        assert cmdq.push(build_command(i, Command.DIR_OPEN, bytes(48)))
    engine = fsm.Engine(
        QueuePort(cmdq, cmplq), FakeOps([]), Executor(None, lambda call: 0), lambda: True
    )
    engine.pump()
    assert engine.port.head == 11 and cmplq.tail == 511
    engine.pump()
    assert engine.port.head == 11
    cmplq.publish_head(5)
    engine.pump()
    assert engine.port.head == 16


@pytest.mark.parametrize("corrupt_tail", [600, 2**64 - 1])
def test_corrupt_command_queue_is_treated_as_empty(corrupt_tail: int) -> None:
    cmdq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
    cmplq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
    cmdq.publish_tail(corrupt_tail)
    engine = fsm.Engine(
        QueuePort(cmdq, cmplq), FakeOps([]), Executor(None, lambda call: 0), lambda: True
    )
    assert engine.pump() is False
    assert cmplq.tail == 0 and cmdq.head == 0


@given(batch=st.lists(ops_strategy, min_size=1, max_size=30))
@settings(max_examples=40, deadline=None)
def test_device_memory_slot_copies_give_identical_queues(batch: list[Any]) -> None:
    """Parsing from aligned private copies of the slots (device memory) changes nothing."""
    regions = []
    for device_memory in (False, True):
        cmdq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
        cmplq = QueueView(memoryview(bytearray(QUEUE_REGION_SIZE)))
        for i, (kind, key, first, length) in enumerate(batch):
            params = b"".join(v.to_bytes(8, "little") for v in (key, first, 0, length))
            cmdq.push(build_command(7000 + i, KIND_TYPE[kind], params))
        port = QueuePort(cmdq, cmplq, device_memory=device_memory)
        engine = fsm.Engine(port, FakeOps([]), Executor(None, lambda call: 0), lambda: True)
        engine.pump()
        assert (engine.port.command_slots is not None) == device_memory
        regions.append(bytes(cmplq.region))
    assert regions[0] == regions[1]
    assert regions[0][64:72] == (7000).to_bytes(8, "little")
