"""Where each call a command yields runs: at once on the driver thread, or on io_uring.

One decision for every call (vmfs.driver.ops yields them as tuples, vmfs.uring.perform runs them):

- at once when the request must not overlap anything (`synchronous`: no ring, or a command
  that touches everything), when this kernel's io_uring lacks the opcode, or when `try_now`
  (vmfs.driver.inline.Inline) says the call cannot wait on the disk and is cheaper done here;
- otherwise on the ring, where the engine submits a batch with one system call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from vmfs import uring

Call = tuple[Any, ...]


class Ring(Protocol):
    """What the engine needs of io_uring (vmfs.uring.Ring; tests use a fake)."""

    def submit_call(self, call: Call, tag: int) -> Any: ...

    def submit(self) -> int: ...

    def wait(self, count: int = 1) -> None: ...

    def reap(self) -> list[tuple[int, int]]: ...


class Executor:
    """The ring (or none), the synchronous performer, and the rule choosing between them."""

    def __init__(
        self,
        ring: Ring | None,
        perform: Callable[[Call], int] = uring.perform,
        inline_ops: frozenset[int] = frozenset(),
        try_now: Callable[[Call], int | None] | None = None,
    ) -> None:
        self.ring = ring
        self.perform = perform
        self.inline_ops = inline_ops
        self.try_now = try_now

    def now(self, call: Call, synchronous: bool) -> int | None:
        """The call's result if it runs at once; None if it goes on the ring."""
        if synchronous or self.ring is None or call[0] in self.inline_ops:
            return self.perform(call)
        if self.try_now is not None:
            return self.try_now(call)
        return None
