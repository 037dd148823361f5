"""The client session the demo and the tests run from the host, written against the protocol.

`ProtocolClient` is `vmfs.client.Client` over any client transport, with fresh ids and every
answer kept for exactly-once checks. `fs_session` is what a
LionsOS program does with a real driver; `echo_session` is what the stand-in driver can answer
(it returns SUCCESS with data 0 for everything), and checks only the transport guarantees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vmfs import wire
from vmfs.client import Client, Completion
from vmfs.client.transport import ClientTransport
from vmfs.errors import VmfsError
from vmfs.wire import Command, OpenFlags, Status

# Where the session puts things in the data share.
PATH_A = 0
PATH_B = 0x1000
NAME_BUF = 0x8000
STAT_BUF = 0x9000
IO_BUF = 0x10000
BIG_SIZE = 1024 * 1024


class SessionError(VmfsError):
    """A command's answer was not what the session expected."""


class ProtocolClient(Client):
    """`vmfs.client.Client` for sessions: fresh ids, every answer kept, each call logged.

    `submit` never reuses an id, and `result` leaves the completion in `answers`, so a session
    can check afterwards that each id was answered exactly once.
    """

    def __init__(self, transport: ClientTransport, log: Callable[[str], None] = print) -> None:
        super().__init__(transport, timeout=60.0)
        self.t = transport
        self.next_id = 0
        self.answers = self._arrived
        self.log = log

    def submit(self, cmd: int, params: bytes = b"", signal: bool = True) -> int:
        """Queue one command under a fresh id; when the queue is full, wait for room."""
        cmd_id = self.send(cmd, params, self.next_id)
        self.next_id += 1
        if signal:
            self.signal()
        return cmd_id

    def drain(self) -> None:
        self.collect()

    def result(self, cmd_id: int, timeout: float = 60.0) -> Completion:
        """The first completion for `cmd_id` (kept in `answers`)."""
        deadline = time.monotonic() + timeout
        while True:
            self.collect()
            if self.answers.get(cmd_id):
                return self.answers[cmd_id][0]
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionError(f"no completion for id {cmd_id} within {timeout} s")
            self.t.wait(min(left, 1.0))  # re-check the queue even without a doorbell

    def call(  # type: ignore[override]
        self, cmd: Command, expect: Status | None = Status.SUCCESS, **fields: Any
    ) -> int:
        """Send one command and wait for it; check its status; return its data."""
        started = time.monotonic()
        res = self.result(self.submit(cmd, wire.build_params(cmd, **fields)))
        ms = (time.monotonic() - started) * 1000
        self.log(f"  {cmd.name:<14} -> {res} ({ms:.1f} ms)")
        if expect is not None and res.status != expect:
            raise SessionError(f"{cmd.name}: expected {expect.name}, got {res}")
        return res.data

    def put(self, offset: int, data: bytes) -> dict[str, int]:  # type: ignore[override]
        """Place bytes at a fixed offset of the share; return them as a buffer descriptor."""
        self.t.data[offset : offset + len(data)] = data
        return {"offset": offset, "size": len(data)}

    def get(self, offset: int, size: int) -> bytes:
        return bytes(self.t.data[offset : offset + size])


def pattern(size: int) -> bytes:
    """Non-repeating-looking content, so a misplaced block is noticed."""
    return bytes((i * 7 + (i >> 9)) & 0xFF for i in range(size))


# What the FAT partition holds after fs_session (checked on the host with mtools).
HELLO = b"hello from the LionsOS side\n"
EXPECTED_FILES = {"/demo/greeting.txt": HELLO, "/demo/big.bin": pattern(BIG_SIZE)}
EXPECTED_LISTING = ["/demo/", "/demo/big.bin", "/demo/greeting.txt"]


def _write_file(c: ProtocolClient, path: bytes, data: bytes) -> None:
    fd = c.call(Command.FILE_OPEN, path=c.put(PATH_A, path),
                flags=OpenFlags.CREATE | OpenFlags.READ_WRITE)  # fmt: skip
    written = c.call(Command.FILE_WRITE, fd=fd, offset=0, buf=c.put(IO_BUF, data))
    if written != len(data):
        raise SessionError(f"wrote {written} of {len(data)} bytes to {path!r}")
    c.call(Command.FILE_CLOSE, fd=fd)


def _read_file(c: ProtocolClient, path: bytes, size: int) -> bytes:
    fd = c.call(Command.FILE_OPEN, path=c.put(PATH_A, path), flags=OpenFlags.READ_ONLY)
    if c.call(Command.FILE_SIZE, fd=fd) != size:
        raise SessionError(f"{path!r} has the wrong size")
    got = c.call(Command.FILE_READ, fd=fd, offset=0, buf={"offset": IO_BUF, "size": size + 4096})
    c.call(Command.FILE_CLOSE, fd=fd)
    return c.get(IO_BUF, got)


def _list(c: ProtocolClient, path: bytes) -> list[str]:
    fd = c.call(Command.DIR_OPEN, path=c.put(PATH_A, path))
    names = []
    while True:
        n = c.call(Command.DIR_READ, expect=None, fd=fd, buf={"offset": NAME_BUF, "size": 256})
        if c.answers[c.next_id - 1][0].status != Status.SUCCESS:
            break
        names.append(c.get(NAME_BUF, n).decode())
    c.call(Command.DIR_CLOSE, fd=fd)
    return sorted(names)


def fs_session(c: ProtocolClient, initialise: bool = True) -> None:
    """mkdir, write, list, read back, rename, remove, a 1 MiB file: what EXPECTED_FILES says."""
    if initialise:
        c.call(Command.INITIALISE)
    c.call(Command.DIR_CREATE, path=c.put(PATH_A, b"/demo"))
    _write_file(c, b"/demo/hello.txt", HELLO)
    _write_file(c, b"/demo/big.bin", EXPECTED_FILES["/demo/big.bin"])
    _write_file(c, b"/demo/scratch.txt", b"to be removed\n")
    if _list(c, b"/demo") != ["big.bin", "hello.txt", "scratch.txt"]:
        raise SessionError("listing of /demo is wrong")
    if _read_file(c, b"/demo/hello.txt", len(HELLO)) != HELLO:
        raise SessionError("hello.txt read back differs")
    if _read_file(c, b"/demo/big.bin", BIG_SIZE) != EXPECTED_FILES["/demo/big.bin"]:
        raise SessionError("big.bin read back differs")
    c.call(Command.RENAME, old_path=c.put(PATH_A, b"/demo/hello.txt"),
           new_path=c.put(PATH_B, b"/demo/greeting.txt"))  # fmt: skip
    c.call(Command.FILE_REMOVE, path=c.put(PATH_A, b"/demo/scratch.txt"))
    c.call(Command.STAT, path=c.put(PATH_A, b"/demo/greeting.txt"),
           buf={"offset": STAT_BUF, "size": wire.STAT_SIZE})  # fmt: skip
    st = wire.StatRecord.parse(c.get(STAT_BUF, wire.STAT_SIZE))
    if st.size != len(HELLO) or not st.mode & 0o100000:
        raise SessionError(f"STAT of greeting.txt is wrong: {st}")
    if _list(c, b"/demo") != ["big.bin", "greeting.txt"]:
        raise SessionError("listing after rename/remove is wrong")
    c.call(Command.DEINITIALISE)


def echo_session(c: ProtocolClient, pipelined: int = 100) -> None:
    """One completion per command, same id, in a burst bigger than one batch; nothing else."""
    c.call(Command.DIR_CREATE, path=c.put(PATH_A, b"/demo"))
    started = time.monotonic()
    ids = [c.submit(i % wire.NUM_COMMANDS, signal=False) for i in range(pipelined)]
    ids.append(c.submit(99))  # an invalid type is answered too
    for cmd_id in ids:
        c.result(cmd_id)
    c.drain()
    dupes = [i for i, answers in c.answers.items() if len(answers) != 1]
    if dupes or set(ids) - set(c.answers):
        raise SessionError(f"ids answered other than once: {dupes}")
    ms = (time.monotonic() - started) * 1000
    c.log(f"  {len(ids)} pipelined commands, one signal: all answered once ({ms:.1f} ms)")
