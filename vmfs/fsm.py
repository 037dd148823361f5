"""The request state machine and the batch loop that drives every request through it.

The lifecycle is declared once, as `transitions` machines (`request_machine()` and friends); the
diagrams in diagrams/ are generated from those very objects. For speed, the request machine is
compiled at start-up into a flat table indexed by (state, trigger); `tests/test_fsm.py` proves the
table and the machine agree everywhere. The same table is handed to the native serve loop
(vmfs.driver.native, csrc/serve.c), which moves its requests only along its edges.

The batch loop (`Engine.pump`) takes every command it may (bounded by free completion slots),
starts each one in queue order, submits what went to io_uring in one system call, reaps, writes
completions as they arrive and publishes them. A request that must not overlap earlier work — a
synchronous call, or a call touching something an in-flight request touches — enters
barrier_wait: the ring is flushed (everything submitted before it completes), then it runs. So a
client observes exactly what running the commands one at a time in queue order would give.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from transitions import Machine

from vmfs._native import ffi, lib
from vmfs.driver.executor import Executor
from vmfs.driver.journal import WRITTEN
from vmfs.driver.ordering import InFlight
from vmfs.driver.paths import PathRefused, status_of
from vmfs.driver.queueport import QueuePort
from vmfs.driver.request import Request
from vmfs.wire import (
    COMMAND_PARAMS_OFFSET,
    FAST_PARAMS,
    MESSAGE_HEADER,
    NUM_COMMANDS,
    QUEUE_CAPACITY,
    U64_MASK,
    Command,
    Status,
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
# The batch loop: the queue port takes and answers, the executor runs calls, the engine decides.


class Commands(Protocol):
    """What the engine needs of the operations (vmfs.driver.ops.Operations plus ordering claims)."""

    table: dict[int, Callable[[Request], Any]]

    def claims(self, req: Request) -> tuple[tuple[Any, int, int, bool], ...] | None: ...


class Engine:
    """Drives every request through the machine: takes commands from the port in queue order,
    holds one that could observe in-flight work at the barrier, runs each command's calls
    through the executor, answers, and publishes. The native loop (vmfs.driver.native) takes over
    whenever nothing is in flight (`run_native`)."""

    def __init__(
        self,
        port: QueuePort,
        ops: Commands,
        executor: Executor,
        initialised: Callable[[], bool],
        native: Any = None,
    ) -> None:
        self.port = port
        self.ops = ops
        self.executor = executor
        self.ring = executor.ring
        self.initialised = initialised
        self.journal = port.journal
        self.counters = port.counters
        # vmfs.driver.native.Context with the queues attached: serves the common commands in C
        self.native = native
        self.hand_back = False  # set by a driver that runs the native loop (see pump)
        self._native_kinds = bytes(NUM_COMMANDS)
        if native is not None:
            self._native_kinds = bytes(native.ctx.native[0:NUM_COMMANDS])
            self._native_ctx = native.ctx
            self._native_out = ffi.new("uint32_t *"), ffi.new("uint64_t *")
        self.slots = [Request() for _ in range(QUEUE_CAPACITY)]
        self.in_flight = 0  # requests with a call on the ring
        self.ordering = InFlight(len(self.slots))
        self.tap: Callable[[str, Request], None] | None = None
        self.on_refusal: Callable[[Request], None] | None = None  # each non-SUCCESS completion
        queued = (port.cmdq.tail - port.head) & U64_MASK
        recovering = self.journal is not None and queued <= QUEUE_CAPACITY
        self._recovering = queued if recovering else 0

    # -- taking -------------------------------------------------------------------------------

    def pump(self) -> bool:
        """One batch: take, start, submit, reap, publish. True if anything happened.

        With `hand_back` set (the driver runs the native loop), taking stops at a command the
        native loop takes once everything before it is answered: the loop goes on from there.
        """
        port = self.port
        takeable = port.takeable()
        slots = self.slots
        native = self.native is not None and self.tap is None
        hand_back = native and self.hand_back
        natives = self._native_kinds
        clock = time.perf_counter_ns
        took = 0
        while took < takeable:
            index = port.next_take
            req = slots[index % QUEUE_CAPACITY]
            message, off = port.message(index)
            req.id, cmd = MESSAGE_HEADER.unpack_from(message, off)
            if (
                hand_back
                and took
                and not port.outstanding
                and not self.in_flight
                and cmd < NUM_COMMANDS
                and natives[cmd]
            ):
                break  # all answered: the native loop goes on from this command
            took += 1
            req.cmd = cmd
            req.index = index
            port.took(index)
            fire(req, _TAKE)
            req.started = clock()
            if self._recovering:
                self._recovering -= 1
                entry = self.journal.entry(index) if self.journal else None
                if entry is not None:
                    self._recover(req, entry)
                    continue
            if native and not self.in_flight and self._serve_natively(req, message, off):
                continue
            self.dispatch(req, message, off)
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
        port = self.port
        return (
            not port.outstanding
            and not self.in_flight
            and port.head == port.next_take
            and port.cmpl_published == port.cmpl_tail
            and not self._recovering
        )

    def run_native(self) -> int:
        """Serve in the native loop (csrc/serve.c) until it hands back; its reason
        (lib.VMFS_LOOP_*). The loop continues exactly where this engine stands, and this
        engine where the loop stopped: nothing is ever in flight across the hand-over."""
        c, port = self._native_ctx, self.port
        c.head = c.next_take = port.next_take
        c.cmpl_tail = port.cmpl_tail
        code = lib.vmfs_serve(c)
        port.head = port.next_take = c.next_take
        port.cmpl_tail = port.cmpl_published = c.cmpl_tail
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
        now = self.executor.now
        try:
            while True:
                call = steps.send(None) if first else steps.send(result)
                first = False
                done = now(call, req.synchronous)
                if done is not None:
                    result = done
                    continue
                req.keep = self._submit(call, req.index % QUEUE_CAPACITY)
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

    def _submit(self, call: tuple[Any, ...], tag: int) -> Any:
        """Put `call` on the ring; with no room in the submission queue, make some and wait."""
        ring = self.ring
        assert ring is not None
        keep = ring.submit_call(call, tag)
        while keep is None:
            ring.submit()
            keep = ring.submit_call(call, tag)
            if keep is None and self.in_flight:
                ring.wait(1)
                self.reap_ready()
            elif keep is None:
                raise OSError(16, "io_uring submission queue full with nothing in flight")
        return keep

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
            published = self.port.cmpl_published
            unpublished = (entry.completion_index - published) & U64_MASK < 1 << 63
            if not unpublished:
                self.port.outstanding -= 1
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
        self.port.write(req)
        if req.status and self.on_refusal is not None:
            self.on_refusal(req)
        if self.tap:
            self.tap("complete", req)

    def publish(self) -> bool:
        """Make written completions visible, then let the client reuse their command slots."""
        port = self.port
        published = port.publish_completions()
        head = port.head
        slots = self.slots
        while head != port.next_take:
            req = slots[head % QUEUE_CAPACITY]
            if req.state != COMPLETED:
                break
            fire(req, T["publish"])
            head = (head + 1) & U64_MASK
        port.publish_head(head)
        if published:
            port.notify()
        return published
