"""The request state machine and the batch loop that drives every request through it.

The lifecycle is declared once, as `transitions` machines (`request_machine()` and friends); the
diagrams in diagrams/ are generated from those very objects. For speed, the request machine is
compiled at start-up into a flat table indexed by (state, trigger); `tests/test_fsm.py` proves the
table and the machine agree everywhere.

The batch loop (`Engine.pump`) takes every command it may (bounded by free completion slots),
starts each one in queue order, submits what went to io_uring in one system call, reaps, writes
completions as they arrive and publishes them. A request that must not overlap earlier work — a
synchronous call, or a call touching something an in-flight request touches — enters
barrier_wait: the ring is flushed (everything submitted before it completes), then it runs. So a
client observes exactly what running the commands one at a time in queue order would give.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

from transitions import Machine

from vmfs._native import ffi, lib
from vmfs.journal import WRITTEN
from vmfs.ordering import InFlight
from vmfs.paths import PathRefused, status_of
from vmfs.request import Request
from vmfs.shm import DeviceSlots
from vmfs.stats import Counters
from vmfs.wire import (
    COMMAND_PARAMS_OFFSET,
    COMPLETION_FAST,
    FAST_PARAMS,
    MESSAGE_HEADER,
    MESSAGE_SIZE,
    NUM_COMMANDS,
    QUEUE_CAPACITY,
    QUEUE_HEADER_SIZE,
    U64_MASK,
    Command,
    QueueView,
    Status,
    batch_limit,
)

log = logging.getLogger("vmfs.fsm")

# ---------------------------------------------------------------------------------------------
# The machines (declarations only: the single source of the diagrams and the compiled table).

REQUEST_STATES = ["idle", "queued", "submitted", "barrier_wait", "completed"]
REQUEST_TRANSITIONS = [
    {"trigger": "take", "source": "idle", "dest": "queued"},
    {"trigger": "answer", "source": "queued", "dest": "completed"},
    {"trigger": "recover", "source": "queued", "dest": "completed"},
    {"trigger": "submit", "source": "queued", "dest": "submitted"},
    {"trigger": "hold", "source": "queued", "dest": "barrier_wait"},
    {"trigger": "release", "source": "barrier_wait", "dest": "submitted"},
    {"trigger": "run", "source": "barrier_wait", "dest": "completed"},
    {"trigger": "resubmit", "source": "submitted", "dest": "submitted"},
    {"trigger": "reap", "source": "submitted", "dest": "completed"},
    {"trigger": "fail", "source": ["queued", "submitted", "barrier_wait"], "dest": "completed"},
    {"trigger": "publish", "source": "completed", "dest": "idle"},
    {"trigger": "hand_over", "source": ["queued", "barrier_wait"], "dest": "idle"},
]

DRIVER_STATES = ["starting", "recovering", "serving", "draining", "stopped"]
DRIVER_TRANSITIONS = [
    {"trigger": "attach", "source": "starting", "dest": "recovering"},
    {"trigger": "resume", "source": "recovering", "dest": "serving"},
    {"trigger": "stop", "source": ["recovering", "serving"], "dest": "draining"},
    {"trigger": "drained", "source": "draining", "dest": "stopped"},
]

MOUNT_STATES = ["uninitialised", "initialised"]
MOUNT_TRANSITIONS = [
    {"trigger": "initialise", "source": "uninitialised", "dest": "initialised"},
    {"trigger": "initialise", "source": "initialised", "dest": "initialised"},
    {"trigger": "deinitialise", "source": "initialised", "dest": "uninitialised"},
    {"trigger": "deinitialise", "source": "uninitialised", "dest": "uninitialised"},
    {"trigger": "mount_failed", "source": "uninitialised", "dest": "uninitialised"},
    {"trigger": "unmount_failed", "source": "initialised", "dest": "initialised"},
]


MACHINES = {
    "request": (REQUEST_STATES, REQUEST_TRANSITIONS, "idle"),
    "driver": (DRIVER_STATES, DRIVER_TRANSITIONS, "starting"),
    "mount": (MOUNT_STATES, MOUNT_TRANSITIONS, "uninitialised"),
}


def build_machine(
    name: str, model: Any = None, machine_class: type[Machine] = Machine, **extra: Any
) -> Machine:
    """One of MACHINES as a `transitions` machine (GraphMachine for diagrams)."""
    states, transitions, initial = MACHINES[name]
    return machine_class(
        model=model,
        states=states,
        transitions=transitions,
        initial=initial,
        auto_transitions=False,
        **extra,
    )


def request_machine(
    model: Any = None, machine_class: type[Machine] = Machine, **extra: Any
) -> Machine:
    return build_machine("request", model, machine_class, **extra)


def driver_machine(
    model: Any = None, machine_class: type[Machine] = Machine, **extra: Any
) -> Machine:
    return build_machine("driver", model, machine_class, **extra)


def mount_machine(
    model: Any = None, machine_class: type[Machine] = Machine, **extra: Any
) -> Machine:
    return build_machine("mount", model, machine_class, **extra)


class IllegalTransition(Exception):
    """A request was driven along an edge the machine does not have: a driver bug."""


def compile_table(machine: Machine) -> tuple[dict[str, int], dict[str, int], list[list[int]]]:
    """(state index, trigger index, table[state][trigger] -> next state or -1) from a machine."""
    states = {name: i for i, name in enumerate(machine.states)}
    triggers = {name: i for i, name in enumerate(machine.events)}
    table = [[-1] * len(triggers) for _ in states]
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                table[states[source]][triggers[trigger]] = states[transition.dest]
    return states, triggers, table


_MACHINE = request_machine()
STATE, TRIGGER, TABLE = compile_table(_MACHINE)
IDLE, QUEUED, SUBMITTED = STATE["idle"], STATE["queued"], STATE["submitted"]
BARRIER_WAIT, COMPLETED = STATE["barrier_wait"], STATE["completed"]
T = TRIGGER  # short alias for the hot path
_TAKE = T["take"]
_ANSWER = T["answer"]


def _finishing_triggers() -> list[int]:
    """Per state, the one edge a request whose work is done takes to `completed` (-1: none).
    Read off the table, so the machine, not the engine, says how each state finishes."""
    special = {T["fail"], T["recover"]}
    finish = []
    for state, row in enumerate(TABLE):
        edges = [t for t, nxt in enumerate(row) if nxt == COMPLETED and t not in special]
        assert len(edges) <= 1, f"{REQUEST_STATES[state]} finishes two ways"
        finish.append(edges[0] if edges else -1)
    return finish


FINISH = _finishing_triggers()


def fire(req: Request, trigger: int) -> None:
    """Move `req` along one edge of the compiled machine."""
    nxt = TABLE[req.state][trigger]
    if nxt < 0:
        raise IllegalTransition(
            f"{REQUEST_STATES[req.state]} has no {list(TRIGGER)[trigger]} transition"
        )
    req.state = nxt


# ---------------------------------------------------------------------------------------------
# The batch loop.


class Executor(Protocol):
    """What the engine needs of io_uring (vmfs.uring.Ring; tests use a fake)."""

    def submit_call(self, call: tuple[Any, ...], tag: int) -> Any: ...

    def submit(self) -> int: ...

    def wait(self, count: int = 1) -> None: ...

    def reap(self) -> list[tuple[int, int]]: ...


class Commands(Protocol):
    """What the engine needs of the operations (vmfs.ops.Operations plus ordering claims)."""

    table: dict[int, Callable[[Request], Any]]

    def claims(self, req: Request) -> tuple[tuple[Any, int, int, bool], ...] | None: ...


class JournalLike(Protocol):
    def entry(self, index: int) -> Any: ...

    def started(self, index: int) -> None: ...

    def written(self, index: int, status: int, data: int, completion_index: int) -> None: ...


class Engine:
    """Takes commands off the command queue, drives them, writes and publishes completions."""

    def __init__(
        self,
        commands: QueueView,
        completions: QueueView,
        ops: Commands,
        executor: Executor | None,
        perform: Callable[[tuple[Any, ...]], int],
        initialised: Callable[[], bool],
        journal: JournalLike | None = None,
        counters: Counters | None = None,
        inline_ops: frozenset[int] = frozenset(),
        native: Any = None,
        try_now: Callable[[tuple[Any, ...]], int | None] | None = None,
        device_memory: bool = False,
    ) -> None:
        self.cmdq = commands
        self.cmplq = completions
        self.ops = ops
        self.ring = executor
        self.perform = perform
        self.initialised = initialised
        self.journal = journal
        self.counters = counters or Counters()
        self.inline_ops = inline_ops
        # vmfs.native.Context with the queues attached: serves the common commands in C
        self.native = native
        self.hand_back = False  # set by a driver that runs the native loop (see pump)
        self._native_kinds = bytes(NUM_COMMANDS)
        if native is not None:
            self._native_kinds = bytes(native.ctx.native[0:NUM_COMMANDS])
            self._native_ctx = native.ctx
            self._native_out = ffi.new("uint32_t *"), ffi.new("uint64_t *")
        self.try_now = try_now  # a call performed now, or None for the ring
        self.slots = [Request() for _ in range(QUEUE_CAPACITY)]
        self.head = commands.head  # lowest command index not yet answered and published
        self.next_take = self.head  # next command index to take
        self.cmpl_tail = completions.tail  # next completion index to write
        self.cmpl_published = self.cmpl_tail
        self.outstanding = 0  # taken, not yet written
        self.in_flight = 0  # requests with a call on the ring
        self.ordering = InFlight(len(self.slots))
        # Queue regions in device memory are read and written only by aligned slot copies.
        self.command_slots = DeviceSlots(commands.region) if device_memory else None
        self.completion_slots = DeviceSlots(completions.region) if device_memory else None
        self.native_served = 0
        self.tap: Callable[[str, Request], None] | None = None
        self.on_refusal: Callable[[Request], None] | None = None  # each non-SUCCESS completion
        queued = (commands.tail - self.head) & U64_MASK
        self._recovering = queued if journal is not None and queued <= QUEUE_CAPACITY else 0
        self._warned_at = 0.0

    # -- taking -------------------------------------------------------------------------------

    def takeable(self) -> int:
        """How many commands may be taken now (docs/protocol.md "Queue layout"); corrupt
        indices are logged."""
        n, problem = batch_limit(
            self.head,
            self.next_take,
            self.cmdq.tail,
            self.cmpl_tail,
            self.cmplq.head,
            self.outstanding,
        )
        if problem:
            self._warn(problem)
        return n

    def pump(self) -> bool:
        """One batch: take, start, submit, reap, publish. True if anything happened.

        With `hand_back` set (the driver runs the native loop), taking stops at a command the
        native loop takes once everything before it is answered: the loop goes on from there.
        """
        takeable = self.takeable()
        region = self.cmdq.region
        device_slots = self.command_slots
        slots = self.slots
        native = self.native is not None and self.tap is None
        hand_back = native and self.hand_back
        natives = self._native_kinds
        clock = time.perf_counter_ns
        took = 0
        while took < takeable:
            index = self.next_take
            slot = index % QUEUE_CAPACITY
            req = slots[slot]
            off = QUEUE_HEADER_SIZE + slot * MESSAGE_SIZE
            if device_slots is not None:
                message, moff = device_slots.read(off), 0
            else:
                message, moff = region, off
            req.id, cmd = MESSAGE_HEADER.unpack_from(message, moff)
            if (
                hand_back
                and took
                and not self.outstanding
                and not self.in_flight
                and cmd < NUM_COMMANDS
                and natives[cmd]
            ):
                break  # all answered: the native loop goes on from this command
            took += 1
            req.cmd = cmd
            req.index = index
            self.next_take = (index + 1) & U64_MASK
            self.outstanding += 1
            fire(req, _TAKE)
            req.started = clock()
            if self._recovering:
                self._recovering -= 1
                entry = self.journal.entry(index) if self.journal else None
                if entry is not None:
                    self._recover(req, entry)
                    continue
            if native and not self.in_flight and self._serve_natively(req, message, moff):
                continue
            self.dispatch(req, message, moff)
        if took:
            self.counters.batch(took)
        reaped = self.reap_ready()
        published = self.publish()
        return bool(took or reaped or published)

    def _serve_natively(self, req: Request, message: Any, off: int) -> bool:
        """The command served by the native code the C loop uses (nothing is in flight, so
        queue order holds); False: the ordinary path serves it."""
        status, data = self._native_out
        if lib.vmfs_native_slot(self._native_ctx, req.index, status, data) != lib.VMFS_ANSWERED:
            return False
        fire(req, _ANSWER)
        req.status, req.data = status[0], data[0]
        if req.status:
            req.params = FAST_PARAMS[req.cmd].unpack_from(message, off + COMMAND_PARAMS_OFFSET)
        self.write_completion(req)
        return True

    def quiescent(self) -> bool:
        """Nothing taken, in flight, unwritten or unpublished: the native loop may take over."""
        return (
            not self.outstanding
            and not self.in_flight
            and self.head == self.next_take
            and self.cmpl_published == self.cmpl_tail
            and not self._recovering
        )

    def run_native(self) -> int:
        """Serve in the native loop (csrc/serve.c) until it hands back; its reason
        (lib.VMFS_LOOP_*). The loop continues exactly where this engine stands, and this
        engine where the loop stopped: nothing is ever in flight across the hand-over."""
        c = self._native_ctx
        c.head = c.next_take = self.next_take
        c.cmpl_tail = self.cmpl_tail
        before = c.served
        code = lib.vmfs_serve(c)
        self.head = self.next_take = c.next_take
        self.cmpl_tail = self.cmpl_published = c.cmpl_tail
        if code == lib.VMFS_LOOP_ILLEGAL:
            raise IllegalTransition("the native loop met a step the request machine lacks")
        for i in range(c.refused_count):
            if self.on_refusal is not None:
                refused = c.refused[i]
                req = Request()
                req.index, req.id, req.cmd = refused.index, refused.id, refused.cmd
                req.status, req.params = refused.status, tuple(refused.params)
                self.on_refusal(req)
        c.refused_count = 0
        self.native_served += c.served - before
        return code

    def dispatch(self, req: Request, message: Any, off: int) -> None:
        """Start one command parsed from `message` (the slot, or its private copy) at `off`."""
        cmd = req.cmd
        if self.tap:
            self.tap("take", req)
        if cmd >= NUM_COMMANDS:
            self._answer(req, Status.INVALID_COMMAND, T["answer"])
            return
        if not self.initialised() and cmd > Command.DEINITIALISE:
            self._answer(req, Status.ERROR, T["answer"])
            return
        params = FAST_PARAMS[cmd].unpack_from(message, off + COMMAND_PARAMS_OFFSET)
        req.params = params
        if self.journal:
            self.journal.started(req.index)
        claims = self.ops.claims(req)
        req.synchronous = claims is None or self.ring is None
        if req.synchronous or (self.in_flight and self.ordering.conflicts(claims)):
            fire(req, T["hold"])
            self.flush()
            if not req.synchronous:  # what it claims may have changed (a file's size)
                claims = self.ops.claims(req)
                req.synchronous = claims is None
        try:
            req.steps = self.ops.table[cmd](req)
        except Exception as exc:
            self._failed(req, exc)
            return
        self._advance(req, 0, first=True, claims=claims)

    def _advance(self, req: Request, result: int, first: bool = False, claims: Any = None) -> None:
        """Feed `result` to the request's steps; queue its next call or finish it."""
        steps = req.steps
        assert steps is not None
        try:
            while True:
                call = steps.send(None) if first else steps.send(result)
                first = False
                if req.synchronous or call[0] in self.inline_ops:
                    result = self.perform(call)
                    continue
                if self.try_now is not None:
                    now = self.try_now(call)
                    if now is not None:
                        result = now
                        continue
                tag = req.index % QUEUE_CAPACITY
                keep = self.ring.submit_call(call, tag)
                while keep is None:  # no room in the submission queue: make some, then wait
                    self.ring.submit()
                    keep = self.ring.submit_call(call, tag)
                    if keep is None and self.in_flight:
                        self.ring.wait(1)
                        self.reap_ready()
                    elif keep is None:
                        raise OSError(16, "io_uring submission queue full with nothing in flight")
                req.keep = keep
                if req.state == SUBMITTED:
                    fire(req, T["resubmit"])
                else:
                    fire(req, T["release"] if req.state == BARRIER_WAIT else T["submit"])
                    self.in_flight += 1
                    self.ordering.claim(req.index % QUEUE_CAPACITY, claims)
                return
        except StopIteration:
            pass
        except PathRefused as refused:
            req.finish(refused.status)
        except Exception as exc:
            self._failed(req, exc)
            return
        trigger = FINISH[req.state]
        if trigger < 0:
            raise IllegalTransition(f"{REQUEST_STATES[req.state]} has no way to finish")
        self._complete(req, trigger)

    def flush(self) -> None:
        """The barrier: wait until every request on the ring has completed."""
        if not self.in_flight or self.ring is None:
            return
        self.counters.flushes += 1
        while self.in_flight:
            self.ring.submit()
            self.ring.wait(1)
            self.reap_ready()

    def reap_ready(self) -> int:
        if self.ring is None or not self.in_flight:
            return 0
        self.ring.submit()
        done = self.ring.reap()
        slots = self.slots
        for tag, result in done:
            req = slots[tag]
            req.keep = None
            self._advance(req, result)
        return len(done)

    def _recover(self, req: Any, entry: Any) -> None:
        """A command the previous driver process already started: never run it twice."""
        fire(req, T["recover"])
        req.started = time.perf_counter_ns()
        if entry.phase == WRITTEN:
            unpublished = (entry.completion_index - self.cmpl_published) & U64_MASK < 1 << 63
            if not unpublished:
                self.outstanding -= 1
                return
            req.status, req.data = entry.status, entry.data
            log.warning("command %d: re-publishing its unpublished completion", req.index)
        else:
            req.status, req.data = int(Status.ERROR), 0
            log.warning(
                "command %d (id %d, type %d) was interrupted by a driver restart; "
                "answering ERROR instead of running it again",
                req.index,
                req.id,
                req.cmd,
            )
        self.write_completion(req)

    # -- completing ---------------------------------------------------------------------------

    def _failed(self, req: Request, exc: BaseException) -> None:
        err = getattr(exc, "errno", None)
        status = status_of(err) if isinstance(err, int) else Status.ERROR
        log.warning("command %d (type %d, id %d) failed: %r", req.index, req.cmd, req.id, exc)
        req.finish(status)
        self._complete(req, T["fail"])

    def _answer(self, req: Request, status: Status, trigger: int) -> None:
        req.status, req.data = int(status), 0
        req.params = ()  # answered before its parameters were read: none to report
        self._complete(req, trigger)

    def _complete(self, req: Request, trigger: int) -> None:
        if req.state == SUBMITTED:
            self.in_flight -= 1
            self.ordering.release(req.index % QUEUE_CAPACITY)
        fire(req, trigger)
        req.steps = None
        self.write_completion(req)

    def write_completion(self, req: Request) -> None:
        index = self.cmpl_tail
        off = QUEUE_HEADER_SIZE + (index % QUEUE_CAPACITY) * MESSAGE_SIZE
        device_slots = self.completion_slots
        if device_slots is None:
            _COMPLETION_SLOT.pack_into(self.cmplq.region, off, req.id, req.status, req.data)
        else:
            _COMPLETION_SLOT.pack_into(device_slots.buffer, 0, req.id, req.status, req.data)
            device_slots.write(off)
        self.cmpl_tail = (index + 1) & U64_MASK
        self.outstanding -= 1
        if self.journal:
            self.journal.written(req.index, req.status, req.data, index)
        self.counters.completed(req.cmd, req.status, time.perf_counter_ns() - req.started)
        if req.status and self.on_refusal is not None:
            self.on_refusal(req)
        if self.tap:
            self.tap("complete", req)

    def publish(self) -> bool:
        """Make written completions visible, then let the client reuse their command slots."""
        published = self.cmpl_tail != self.cmpl_published
        if published:
            self.cmplq.publish_tail(self.cmpl_tail)
            self.cmpl_published = self.cmpl_tail
        head = self.head
        slots = self.slots
        while head != self.next_take:
            req = slots[head % QUEUE_CAPACITY]
            if req.state != COMPLETED:
                break
            fire(req, T["publish"])
            head = (head + 1) & U64_MASK
        if head != self.head:
            self.head = head
            self.cmdq.publish_head(head)
        if published:
            self.notify()
        return published

    def notify(self) -> None:
        """Replaced by the driver with the transport's doorbell."""

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 5.0:
            self._warned_at = now
            log.warning(message)


_COMPLETION_SLOT = struct.Struct(COMPLETION_FAST.format + f"{MESSAGE_SIZE - COMPLETION_FAST.size}x")
