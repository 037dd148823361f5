"""The LionsOS FS protocol on the wire: every layout, enum and constant, and the ring view.

Each layout is stated once, as a field list here. The hot path decodes with `struct.Struct`
objects derived from those lists; the `construct` schemas (`PARAMS`, `CommandMessage`,
`StatRecord`, ...) are built from the same lists on first use, for clients, tools and tests, so
a driver never imports construct (it pulls in pdb and inspect: ~8 MiB and tens of milliseconds
before the first answer). Tests prove both agree byte for byte. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Protocol

from vmfs._native import ffi, lib

# Queue geometry (docs/protocol.md "Queue layout").
QUEUE_CAPACITY = 511
MESSAGE_SIZE = 64
QUEUE_HEADER_SIZE = 64
QUEUE_REGION_SIZE = QUEUE_HEADER_SIZE + QUEUE_CAPACITY * MESSAGE_SIZE
HEAD_OFFSET = 0
TAIL_OFFSET = 8
PARAMS_SIZE = 48
COMPLETION_SIZE = 24

MAX_NAME_LENGTH = 255
MAX_PATH_LENGTH = 4095
STAT_SIZE = 136
DIR_READ_MIN_BUFFER = MAX_NAME_LENGTH + 1
U64_MASK = (1 << 64) - 1
MAX_FILE_OFFSET = 1 << 63  # Linux's offsets are signed: no file reaches this far


class Command(enum.IntEnum):
    INITIALISE = 0
    DEINITIALISE = 1
    FILE_OPEN = 2
    FILE_CLOSE = 3
    STAT = 4
    FILE_READ = 5
    FILE_WRITE = 6
    FILE_SIZE = 7
    RENAME = 8
    FILE_REMOVE = 9
    FILE_TRUNCATE = 10
    DIR_CREATE = 11
    DIR_REMOVE = 12
    DIR_OPEN = 13
    DIR_CLOSE = 14
    FILE_SYNC = 15
    DIR_READ = 16
    DIR_SEEK = 17
    DIR_TELL = 18
    DIR_REWIND = 19


NUM_COMMANDS = len(Command)


class Status(enum.IntEnum):
    SUCCESS = 0
    ERROR = 1
    INVALID_BUFFER = 2
    INVALID_PATH = 3
    INVALID_FD = 4
    ALLOCATION_ERROR = 5
    OUTSTANDING_OPERATIONS = 6
    INVALID_NAME = 7
    TOO_MANY_OPEN_FILES = 8
    SERVER_WAS_DENIED = 9
    INVALID_WRITE = 10
    INVALID_READ = 11
    DIRECTORY_IS_FULL = 12
    INVALID_COMMAND = 13
    END_OF_DIRECTORY = 14
    NO_FILE = 15
    NOT_DIRECTORY = 16
    ALREADY_EXISTS = 17
    NOT_EMPTY = 18


NUM_STATUSES = len(Status)


class OpenFlags(enum.IntFlag):
    READ_ONLY = 0
    WRITE_ONLY = 1
    READ_WRITE = 2
    CREATE = 4


ACCESS_MODE_MASK = 3
KNOWN_OPEN_FLAGS = ACCESS_MODE_MASK | int(OpenFlags.CREATE)

# ---------------------------------------------------------------------------------------------
# Field lists: the one statement of each parameter layout. A field is a buffer descriptor (u64
# offset, u64 size), an unsigned or a signed 64-bit little-endian word.

BUFFER, U64, I64 = "buffer", "u64", "i64"
FIELD_FORMAT = {BUFFER: "QQ", U64: "Q", I64: "q"}

PARAM_FIELDS: dict[Command, tuple[tuple[str, str], ...]] = {
    Command.INITIALISE: (),
    Command.DEINITIALISE: (),
    Command.FILE_OPEN: (("path", BUFFER), ("flags", U64)),
    Command.FILE_CLOSE: (("fd", U64),),
    Command.STAT: (("path", BUFFER), ("buf", BUFFER)),
    Command.FILE_READ: (("fd", U64), ("offset", U64), ("buf", BUFFER)),
    Command.FILE_WRITE: (("fd", U64), ("offset", U64), ("buf", BUFFER)),
    Command.FILE_SIZE: (("fd", U64),),
    Command.RENAME: (("old_path", BUFFER), ("new_path", BUFFER)),
    Command.FILE_REMOVE: (("path", BUFFER),),
    Command.FILE_TRUNCATE: (("fd", U64), ("length", U64)),
    Command.DIR_CREATE: (("path", BUFFER),),
    Command.DIR_REMOVE: (("path", BUFFER),),
    Command.DIR_OPEN: (("path", BUFFER),),
    Command.DIR_CLOSE: (("fd", U64),),
    Command.FILE_SYNC: (("fd", U64),),
    Command.DIR_READ: (("fd", U64), ("buf", BUFFER)),
    Command.DIR_SEEK: (("fd", U64), ("loc", I64)),
    Command.DIR_TELL: (("fd", U64),),
    Command.DIR_REWIND: (("fd", U64),),
}

COMPLETION_DATA_FIELD: dict[Command, str] = {
    Command.FILE_OPEN: "fd",
    Command.FILE_READ: "len_read",
    Command.FILE_WRITE: "len_written",
    Command.FILE_SIZE: "size",
    Command.DIR_OPEN: "fd",
    Command.DIR_READ: "path_len",
    Command.DIR_TELL: "location",
}

STAT_FIELDS = (
    "dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
    "atime", "mtime", "ctime", "atime_nsec", "mtime_nsec", "ctime_nsec", "used",
)  # fmt: skip
CONFIG_FIELDS = ("command_size", "completion_size", "data_size", "fault_size")

# ---------------------------------------------------------------------------------------------
# Fast decoders for the per-request path, derived from the field lists above.


def flat_names(cmd: Command) -> tuple[str, ...]:
    """Field names in the order the fast decoder returns them (buffers split in two)."""
    names: list[str] = []
    for name, kind in PARAM_FIELDS[cmd]:
        names.extend([f"{name}.offset", f"{name}.size"] if kind == BUFFER else [name])
    return tuple(names)


MESSAGE_HEADER = struct.Struct("<QQ")
FAST_PARAMS: dict[Command, struct.Struct] = {
    cmd: struct.Struct("<" + "".join(FIELD_FORMAT[kind] for _, kind in fields))
    for cmd, fields in PARAM_FIELDS.items()
}
COMPLETION_FAST = struct.Struct("<QQQ")
# Where the fast decoders (and the native loop, through vmfs.driver.native) find each message field;
# tests/test_wire.py proves they match the schemas above.
COMMAND_ID_OFFSET, COMMAND_TYPE_OFFSET, COMMAND_PARAMS_OFFSET = 0, 8, 16
COMPLETION_ID_OFFSET, COMPLETION_STATUS_OFFSET, COMPLETION_DATA_OFFSET = 0, 8, 16
STAT_FAST = struct.Struct(f"<{len(STAT_FIELDS)}Q")
CONFIG_FAST = struct.Struct(f"<{len(CONFIG_FIELDS)}Q")

# ---------------------------------------------------------------------------------------------
# The construct schemas, built from the same lists when first asked for (module __getattr__).

SCHEMA_NAMES = frozenset(
    {
        "Buffer",
        "PARAMS",
        "CommandMessage",
        "CompletionMessage",
        "COMPLETION_DATA",
        "StatRecord",
        "QueueHeader",
        "QueueRegion",
        "ConfigPage",
    }
)


def _construct_schemas() -> dict[str, Any]:
    from construct import Array, Bytes, Int64sl, Int64ul, Padded, Struct

    buffer = Struct("offset" / Int64ul, "size" / Int64ul)
    field_schema = {BUFFER: buffer, U64: Int64ul, I64: Int64sl}
    queue_header = Struct("head" / Int64ul, "tail" / Int64ul, Bytes(48))
    return {
        "Buffer": buffer,
        "PARAMS": {
            cmd: Struct(*(name / field_schema[kind] for name, kind in fields))
            for cmd, fields in PARAM_FIELDS.items()
        },
        "CommandMessage": Struct("id" / Int64ul, "type" / Int64ul, "params" / Bytes(PARAMS_SIZE)),
        "CompletionMessage": Padded(
            MESSAGE_SIZE, Struct("id" / Int64ul, "status" / Int64ul, "data" / Int64ul)
        ),
        "COMPLETION_DATA": {
            cmd: Struct(name / Int64ul) for cmd, name in COMPLETION_DATA_FIELD.items()
        },
        "StatRecord": Struct(*(name / Int64ul for name in STAT_FIELDS)),
        "QueueHeader": queue_header,
        "QueueRegion": Struct(
            "header" / queue_header, "slots" / Array(QUEUE_CAPACITY, Bytes(MESSAGE_SIZE))
        ),
        "ConfigPage": Struct(*(name / Int64ul for name in CONFIG_FIELDS)),
    }


_schemas: dict[str, Any] = {}


def schemas() -> dict[str, Any]:
    """The construct schemas by name, built on the first call."""
    if not _schemas:
        _schemas.update(_construct_schemas())
    return _schemas


def __getattr__(name: str) -> Any:
    """`wire.PARAMS`, `from vmfs.wire import StatRecord`, ...: the schemas, built on first use."""
    if name not in SCHEMA_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return schemas()[name]


def slot_offset(index: int) -> int:
    """Region offset of the slot holding message number `index` (free-running u64)."""
    return QUEUE_HEADER_SIZE + (index % QUEUE_CAPACITY) * MESSAGE_SIZE


_PROBLEM = ffi.new("int *")  # batch_limit's report of corrupt indices, reused


def buffer_ok(offset: int, size: int, share_size: int) -> bool:
    """Whether a client's buffer lies inside the share (csrc/handles.c states the rule).

    The rule is docs/protocol.md "Buffers in the data share".
    """
    if not (0 <= offset <= U64_MASK and 0 <= size <= U64_MASK and 0 <= share_size <= U64_MASK):
        return False
    return bool(lib.vmfs_buffer_ok(offset, size, share_size))


def batch_limit(
    head: int, next_take: int, tail: int, cmpl_tail: int, cmpl_head: int, outstanding: int
) -> tuple[int, str | None]:
    """How many commands a server may take now, and what is wrong with the indices if anything.

    `head` is the lowest command not yet answered and published, `next_take` the next one to
    take, `tail` the client's command tail; `cmpl_tail` the next completion to write,
    `cmpl_head` the client's completion head, `outstanding` taken but not yet written. A queue
    more than 511 ahead, or a tail moved back, is corrupt (treated as empty); a completion queue
    more than 511 ahead is corrupt (treated as full). Never take a command without a completion
    slot for it, nor past the 2^64 wrap while the other side of it is live (docs/protocol.md
    "Queue layout"). The rule is stated once, in C (csrc/serve.c), because the native serve
    loop applies it too.
    """
    problem = _PROBLEM
    n = lib.vmfs_batch_limit(
        QUEUE_CAPACITY, head, next_take, tail, cmpl_tail, cmpl_head, outstanding, problem
    )
    if problem[0] == 1:
        return 0, f"command queue corrupt (head {head}, tail {tail}); ignoring it"
    if problem[0] == 2:
        return 0, f"completion queue corrupt (head {cmpl_head}); treating it as full"
    if problem[0] == 3:
        waiting = (tail - next_take) & U64_MASK
        return 0, f"completion queue full; {waiting} commands wait for the client to consume"
    return n, None


def build_command(cmd_id: int, cmd_type: int, params: bytes = b"") -> bytes:
    """A whole 64-byte command message (used by clients and tests)."""
    message = {"id": cmd_id, "type": cmd_type, "params": params.ljust(PARAMS_SIZE, b"\0")}
    return schemas()["CommandMessage"].build(message)


def build_params(cmd: Command, **fields: Any) -> bytes:
    return schemas()["PARAMS"][cmd].build(fields).ljust(PARAMS_SIZE, b"\0")


# ---------------------------------------------------------------------------------------------
# The ring view: one queue region, with index words accessed atomically.


class IndexWords(Protocol):
    """Acquire-load / release-store of the aligned u64 index words at a region offset."""

    def load(self, offset: int) -> int: ...

    def store(self, offset: int, value: int) -> None: ...


class PlainIndexWords:
    """Index access for private memory (tests, fakes): plain struct access, no ordering."""

    _INDEX = struct.Struct("<Q")

    def __init__(self, region: memoryview) -> None:
        self.region = region

    def load(self, offset: int) -> int:
        return self._INDEX.unpack_from(self.region, offset)[0]

    def store(self, offset: int, value: int) -> None:
        self._INDEX.pack_into(self.region, offset, value)


class QueueView:
    """A view of one fs_queue_t region (head, tail, 511 slots)."""

    def __init__(self, region: memoryview, words: IndexWords | None = None) -> None:
        if len(region) < QUEUE_REGION_SIZE:
            raise ValueError(f"queue region is {len(region)} bytes, needs {QUEUE_REGION_SIZE}")
        self.region = region
        self.words = words or PlainIndexWords(region)

    @property
    def head(self) -> int:
        return self.words.load(HEAD_OFFSET)

    @property
    def tail(self) -> int:
        return self.words.load(TAIL_OFFSET)

    def publish_head(self, value: int) -> None:
        self.words.store(HEAD_OFFSET, value & U64_MASK)

    def publish_tail(self, value: int) -> None:
        self.words.store(TAIL_OFFSET, value & U64_MASK)

    def length(self) -> int:
        """Messages queued; may exceed capacity if the peer corrupted an index."""
        return (self.tail - self.head) & U64_MASK

    def peek(self, index: int) -> bytes:
        off = slot_offset(index)
        return bytes(self.region[off : off + MESSAGE_SIZE])

    def write_slot(self, index: int, message: bytes) -> None:
        off = slot_offset(index)
        self.region[off : off + MESSAGE_SIZE] = message.ljust(MESSAGE_SIZE, b"\0")

    def push(self, message: bytes) -> bool:
        """Producer side: write the next slot and publish the tail; False if full."""
        tail = self.tail
        if (tail - self.head) & U64_MASK >= QUEUE_CAPACITY:
            return False
        self.write_slot(tail, message)
        self.publish_tail(tail + 1)
        return True

    def pop(self) -> bytes | None:
        """Consumer side: copy out the oldest message and publish the head; None if empty."""
        head = self.head
        if self.tail == head:
            return None
        message = self.peek(head)
        self.publish_head(head + 1)
        return message
