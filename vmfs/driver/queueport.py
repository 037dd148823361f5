"""The driver's side of the two queues: take command slots, write completions, publish indices.

The port moves bytes and indices and keeps the restart journal and the counters; what happens
to a request between taking and answering is the engine's (vmfs.fsm.Engine). It knows the slot
layout (vmfs.wire), the rule for how many commands may be taken (wire.batch_limit), and device
memory: there, slots are read and written only by aligned copies of whole slots.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any, Protocol

from vmfs.driver.request import Request
from vmfs.driver.stats import Counters
from vmfs.shm import DeviceSlots
from vmfs.wire import (
    COMPLETION_FAST,
    MESSAGE_SIZE,
    U64_MASK,
    QueueView,
    batch_limit,
    slot_offset,
)

log = logging.getLogger("vmfs.fsm")

_COMPLETION_SLOT = struct.Struct(COMPLETION_FAST.format + f"{MESSAGE_SIZE - COMPLETION_FAST.size}x")


class JournalLike(Protocol):
    def entry(self, index: int) -> Any: ...

    def started(self, index: int) -> None: ...

    def written(self, index: int, status: int, data: int, completion_index: int) -> None: ...


class QueuePort:
    """Where the next command is, where its completion goes, and what the client may see."""

    def __init__(
        self,
        commands: QueueView,
        completions: QueueView,
        journal: JournalLike | None = None,
        counters: Counters | None = None,
        device_memory: bool = False,
    ) -> None:
        self.cmdq = commands
        self.cmplq = completions
        self.journal = journal
        self.counters = counters or Counters()
        self.head = commands.head  # lowest command index not yet answered and published
        self.next_take = self.head  # next command index to take
        self.cmpl_tail = completions.tail  # next completion index to write
        self.cmpl_published = self.cmpl_tail
        self.outstanding = 0  # taken, not yet written
        self.command_slots = DeviceSlots(commands.region) if device_memory else None
        self.completion_slots = DeviceSlots(completions.region) if device_memory else None
        self._warned_at = 0.0

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

    def message(self, index: int) -> tuple[Any, int]:
        """(buffer, offset) of command `index`'s slot: the slot itself, or on device memory its
        private copy (valid until the next call)."""
        off = slot_offset(index)
        if self.command_slots is not None:
            return self.command_slots.read(off), 0
        return self.cmdq.region, off

    def took(self, index: int) -> None:
        self.next_take = (index + 1) & U64_MASK
        self.outstanding += 1

    def write(self, req: Request) -> None:
        """The completion of `req` into the next completion slot (not yet visible)."""
        index = self.cmpl_tail
        off = slot_offset(index)
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

    def publish_completions(self) -> bool:
        """Make written completions visible (release store of the tail); whether any were."""
        if self.cmpl_tail == self.cmpl_published:
            return False
        self.cmplq.publish_tail(self.cmpl_tail)
        self.cmpl_published = self.cmpl_tail
        return True

    def publish_head(self, head: int) -> None:
        """Let the client reuse the command slots before `head`."""
        if head != self.head:
            self.head = head
            self.cmdq.publish_head(head)

    def notify(self) -> None:
        """Replaced by the driver with the transport's doorbell."""

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 5.0:
            self._warned_at = now
            log.warning(message)
