"""Calls the ordinary path performs at once instead of through io_uring.

`Inline` lets the Python engine perform a call synchronously when that cannot block on I/O
(close, statx of an open file, an open whose lookup is in the dcache, anything on a memory
filesystem): io_uring would punt such calls to a worker thread, which costs more than the call.
The common commands' own fast path is the native loop (vmfs.driver.native, csrc/serve.c).
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from vmfs._native import lib
from vmfs.uring import (
    IORING_OP_CLOSE,
    IORING_OP_FTRUNCATE,
    IORING_OP_MKDIRAT,
    IORING_OP_OPENAT2,
    IORING_OP_RENAMEAT,
    IORING_OP_STATX,
    IORING_OP_UNLINKAT,
    perform,
)

if TYPE_CHECKING:
    from vmfs.driver.native import Context

NAMESPACE_CALLS = frozenset(
    {IORING_OP_MKDIRAT, IORING_OP_UNLINKAT, IORING_OP_RENAMEAT, IORING_OP_FTRUNCATE}
)


class Inline:
    """For the ordinary path: perform a call now when it cannot block on I/O, else None."""

    def __init__(self, native: Context) -> None:
        self._ctx = native.ctx  # its memory_root is kept with the served root

    def memory_root(self) -> bool:
        return bool(self._ctx.memory_root)

    def __call__(self, call: tuple[Any, ...]) -> int | None:
        op = call[0]
        if op == IORING_OP_CLOSE or op == IORING_OP_STATX:
            return perform(call)
        if op == IORING_OP_OPENAT2:
            if self.memory_root():
                return perform(call)
            if call[3] & os.O_CREAT:
                return None  # RESOLVE_CACHED refuses O_CREAT
            fd = lib.vmfs_openat2_once(
                call[1], call[2], call[3], call[4], call[5] | lib.RESOLVE_CACHED
            )
            return None if fd == -errno.EAGAIN else fd
        if op in NAMESPACE_CALLS and self.memory_root():
            return perform(call)
        return None
