"""The context the Python engine and the native serve loop share (csrc/context.h).

The native loop (csrc/serve.c) serves the common commands — FILE_READ, FILE_WRITE, STAT,
FILE_OPEN, FILE_CLOSE, FILE_SIZE — without returning to Python, and hands anything else back
to the engine in vmfs/fsm.py. Both sides use the same C for those commands' checks and calls
(csrc/handles.c), the same handle table and counters, and the request machine compiled from
vmfs/fsm.py: every number C needs is copied here from where it is stated (wire, fsm, journal,
ops), never typed again in C.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from vmfs import fsm
from vmfs._native import ffi, lib
from vmfs.driver import journal, paths
from vmfs.driver.refusals import NOT_REFUSALS
from vmfs.uring import MAX_IO
from vmfs.wire import (
    ACCESS_MODE_MASK,
    COMMAND_ID_OFFSET,
    COMMAND_PARAMS_OFFSET,
    COMMAND_TYPE_OFFSET,
    COMPLETION_DATA_OFFSET,
    COMPLETION_ID_OFFSET,
    COMPLETION_STATUS_OFFSET,
    DIR_READ_MIN_BUFFER,
    HEAD_OFFSET,
    KNOWN_OPEN_FLAGS,
    MAX_FILE_OFFSET,
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
    MESSAGE_SIZE,
    NUM_COMMANDS,
    NUM_STATUSES,
    QUEUE_CAPACITY,
    QUEUE_HEADER_SIZE,
    STAT_SIZE,
    TAIL_OFFSET,
    Command,
    OpenFlags,
    Status,
)

if TYPE_CHECKING:
    from vmfs.shm import Share

SLOT_BITS = 12  # a handle is generation << SLOT_BITS | slot, below 2^31
MAX_SLOTS = 1 << SLOT_BITS
GENERATION_MASK = (1 << (31 - SLOT_BITS)) - 1
ERRNO_TABLE = 256  # errnos C maps to statuses itself (the rest are ERROR, as status_of says)
BOUNCE_SIZE = 1 << 20  # larger transfers on device memory go through the Python engine
BOUNCE_BUDGET = 4 << 20  # at most this much private memory under cold reads on the ring
FILE_MODE = 0o644
DIR_MODE = 0o755
# FILE_OPENs the loop prepares on the ring before it submits them (each holds a path buffer).
RING_PATHS = 32
OPEN_BASE = os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
DIR_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK

NATIVE_COMMANDS = {
    Command.FILE_READ: lib.VMFS_NATIVE_READ,
    Command.FILE_WRITE: lib.VMFS_NATIVE_WRITE,
    Command.STAT: lib.VMFS_NATIVE_STAT,
    Command.FILE_OPEN: lib.VMFS_NATIVE_OPEN,
    Command.FILE_CLOSE: lib.VMFS_NATIVE_CLOSE,
    Command.FILE_SIZE: lib.VMFS_NATIVE_SIZE,
    Command.DIR_OPEN: lib.VMFS_NATIVE_DIR_OPEN,
    Command.DIR_READ: lib.VMFS_NATIVE_DIR_READ,
    Command.DIR_CLOSE: lib.VMFS_NATIVE_DIR_CLOSE,
    Command.DIR_TELL: lib.VMFS_NATIVE_DIR_TELL,
    Command.DIR_SEEK: lib.VMFS_NATIVE_DIR_SEEK,
    Command.DIR_REWIND: lib.VMFS_NATIVE_DIR_REWIND,
    Command.DIR_CREATE: lib.VMFS_NATIVE_DIR_CREATE,
    Command.DIR_REMOVE: lib.VMFS_NATIVE_DIR_REMOVE,
    Command.FILE_REMOVE: lib.VMFS_NATIVE_FILE_REMOVE,
}

_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


def machine_table() -> Any:
    """The compiled request machine as C reads it: table[state * triggers + trigger]."""
    return ffi.new("int8_t[]", [nxt for row in fsm.TABLE for nxt in row])


class Context:
    """One `struct vmfs_ctx`: its facts, handle table, counters, and (when serving) queues."""

    def __init__(self, handle_limit: int = 1024, ring_available: bool = True) -> None:
        if not 1 <= handle_limit <= MAX_SLOTS:
            raise ValueError(f"handle limit must be 1..{MAX_SLOTS}")
        self.ctx = c = ffi.new("struct vmfs_ctx *")
        self._keep: list[Any] = []
        self._exported: list[Any] = []
        self._fill_facts(c.f)
        self.table = self._keep_alive(machine_table())
        c.f.table = self.table
        c.f.nstates, c.f.ntriggers = len(fsm.TABLE), len(fsm.TRIGGER)
        c.f.idle, c.f.completed = fsm.IDLE, fsm.COMPLETED
        for trigger in (
            "take",
            "answer",
            "publish",
            "submit",
            "resubmit",
            "reap",
            "hold",
            "release",
            "run",
            "hand_over",
        ):
            setattr(c.f, trigger, fsm.TRIGGER[trigger])
        errno_status = [paths.status_of(err) for err in range(ERRNO_TABLE)]
        c.f.errno_status = self._keep_alive(ffi.new("uint8_t[]", errno_status))
        c.f.errno_count = ERRNO_TABLE
        c.f.max_io = MAX_IO
        self.pending = self._keep_alive(ffi.new("struct vmfs_pending[]", QUEUE_CAPACITY))
        c.pending = self.pending
        c.ring, c.ring_event_fd = ffi.NULL, -1
        h = c.handles
        h.limit, h.slot_bits, h.generation_mask = handle_limit, SLOT_BITS, GENERATION_MASK
        h.entries = self._keep_alive(ffi.new("struct vmfs_handle[]", handle_limit))
        h.generation = self._keep_alive(ffi.new("uint32_t[]", handle_limit))
        h.free_fifo = self._keep_alive(ffi.new("uint32_t[]", list(range(handle_limit))))
        h.free_first, h.free_count = 0, handle_limit
        native = [0] * NUM_COMMANDS
        for cmd, kind in NATIVE_COMMANDS.items():
            native[cmd] = kind
        c.native = self._keep_alive(ffi.new("uint8_t[]", native))
        refusal = [int(status not in NOT_REFUSALS) for status in range(NUM_STATUSES)]
        c.refusal = self._keep_alive(ffi.new("uint8_t[]", refusal))
        c.root_fd = -1
        c.looks_for = -2
        c.ring_available = int(ring_available)
        c.wake_fd = c.irq_fd = c.notify_fd = -1
        c.idle_ms = 1000
        self.slot_state = self._keep_alive(ffi.new("uint8_t[]", QUEUE_CAPACITY))
        c.slot_state = self.slot_state
        self.path_buffer = self._keep_alive(ffi.new("char[]", MAX_PATH_LENGTH + 2))

    def _keep_alive(self, cdata: Any) -> Any:
        self._keep.append(cdata)
        return cdata

    def _address(self, buffer: Any, ctype: str = "uint8_t *") -> Any:
        """A C pointer into a Python buffer, held until close()."""
        exported = ffi.from_buffer(buffer)
        self._exported.append(exported)
        return ffi.cast(ctype, exported)

    def close(self) -> None:
        """Let go of the driver's buffers (their mappings can then be closed)."""
        for exported in self._exported:
            ffi.release(exported)
        self._exported.clear()
        c = self.ctx
        c.share = c.cmdq = c.cmplq = c.journal = ffi.NULL

    @staticmethod
    def _fill_facts(f: Any) -> None:
        f.capacity, f.message_size, f.header_size = QUEUE_CAPACITY, MESSAGE_SIZE, QUEUE_HEADER_SIZE
        f.head_offset, f.tail_offset = HEAD_OFFSET, TAIL_OFFSET
        f.id_offset, f.type_offset = COMMAND_ID_OFFSET, COMMAND_TYPE_OFFSET
        f.params_offset = COMMAND_PARAMS_OFFSET
        f.completion_status_offset = COMPLETION_STATUS_OFFSET
        f.completion_data_offset = COMPLETION_DATA_OFFSET
        f.num_commands, f.num_statuses = NUM_COMMANDS, NUM_STATUSES
        f.max_path, f.max_name, f.stat_size = MAX_PATH_LENGTH, MAX_NAME_LENGTH, STAT_SIZE
        f.max_file_offset, f.resolve = MAX_FILE_OFFSET, paths.RESOLVE
        f.resolve_descending = paths.RESOLVE_DESCENDING
        f.open_access_mask, f.open_known = ACCESS_MODE_MASK, KNOWN_OPEN_FLAGS
        f.open_create, f.open_base, f.file_mode = int(OpenFlags.CREATE), OPEN_BASE, FILE_MODE
        f.dir_open_flags, f.dir_mode = DIR_OPEN_FLAGS, DIR_MODE
        f.dir_min_buffer = DIR_READ_MIN_BUFFER
        f.st_end_of_directory = Status.END_OF_DIRECTORY
        f.st_error, f.st_invalid_buffer = Status.ERROR, Status.INVALID_BUFFER
        f.st_invalid_fd, f.st_invalid_path = Status.INVALID_FD, Status.INVALID_PATH
        f.st_invalid_read, f.st_invalid_write = Status.INVALID_READ, Status.INVALID_WRITE
        f.st_too_many_open_files = Status.TOO_MANY_OPEN_FILES
        f.journal_words = journal.ENTRY_SIZE // 8
        f.journal_started, f.journal_written = journal.STARTED, journal.WRITTEN
        assert COMPLETION_ID_OFFSET == COMMAND_ID_OFFSET  # C writes the id where it read it

    # -- what the driver attaches ---------------------------------------------------------

    @property
    def root_fd(self) -> int | None:
        fd = self.ctx.root_fd
        return None if fd < 0 else fd

    @root_fd.setter
    def root_fd(self, fd: int | None) -> None:
        self.ctx.root_fd = -1 if fd is None else fd
        self.ctx.memory_root = int(fd is not None and lib.vmfs_memory_fs(fd))
        self.ctx.looks_for = -2  # a new root: whether FILE_OPEN looks is learnt afresh

    def open_looks(self) -> bool:
        """Whether FILE_OPEN looks at its target before opening it: the root may hold device
        nodes (not a nodev mount, not FAT), which only a look keeps from being opened."""
        return self.root_fd is not None and bool(lib.vmfs_open_looks(self.ctx, self.root_fd))

    def attach_share(self, share: Share) -> None:
        """The data region the commands' buffers point into (paths are read from it here)."""
        view, direct = share.view, share.direct
        share.native = self
        c = self.ctx
        c.share = self._address(view)
        c.share_size = len(view)
        c.device_memory = int(not direct)
        if not direct:
            c.bounce = self._keep_alive(_uncleared("char[]", BOUNCE_SIZE))
            c.bounce_size = BOUNCE_SIZE
            c.bounce_budget = BOUNCE_BUDGET

    def attach_journal(self, mapping: Any, first_entry: int) -> None:
        """The restart journal's mapping; its entries start at byte `first_entry`."""
        self.ctx.journal = self._address(mapping, "uint64_t *") + first_entry // 8

    def attach_counts(self, by_command: Any, latency: Any, batches: Any) -> None:
        counts = self.ctx.counts
        counts.by_command, counts.latency, counts.batches = by_command, latency, batches
        counts.latency_buckets, counts.batch_buckets = len(latency), len(batches)
        self._keep.extend((by_command, latency, batches))

    def attach_queues(self, commands: memoryview, completions: memoryview) -> None:
        c = self.ctx
        c.cmdq = self._address(commands)
        c.cmplq = self._address(completions)

    def attach_transport(self, irq_fd: int, notify_fd: int, doorbell: Any, wake_fd: int) -> None:
        """Loopback: irq and notify FIFOs. UIO: the irq device and the doorbell's address."""
        c = self.ctx
        c.irq_fd, c.notify_fd, c.wake_fd = irq_fd, notify_fd, wake_fd
        c.uio = int(doorbell is not None)
        if doorbell is not None:
            c.doorbell = self._keep_alive(ffi.cast("uint8_t *", doorbell))

    def attach_ring(self, ring: Any, event_fd: int) -> None:
        """The io_uring the loop puts cold reads, opens, closes and STATs on, and its eventfd."""
        self.ctx.ring = ring
        self.ctx.ring_event_fd = event_fd
        paths = self._keep_alive(ffi.new("char[]", RING_PATHS * (MAX_PATH_LENGTH + 2)))
        self.ctx.ring_paths, self.ctx.ring_paths_cap = paths, RING_PATHS
        self._keep.append(ring)

    def record_transitions(self, capacity: int) -> Any:
        """Tests: keep every transition the loop makes (up to `capacity`)."""
        buffer = self._keep_alive(ffi.new("uint32_t[]", capacity))
        self.ctx.transitions, self.ctx.transitions_cap, self.ctx.transitions_len = (
            buffer,
            capacity,
            0,
        )
        return buffer
