"""A client of the LionsOS FS protocol: what a native LionsOS program does, in Python.

Used by the tests, the demo, the benchmarks and trace replay. It lays inputs and outputs in the
share (32 KiB units, as the LionsOS client library does), pipelines commands with distinct ids,
and matches completions by id. `LoopbackServer` runs `vmfs serve` against a loopback directory.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmfs.client.transport import ClientTransport, LoopbackClientTransport, create_loopback_dir
from vmfs.shm import SharedIndexWords
from vmfs.wire import (
    COMPLETION_FAST,
    PARAMS,
    QUEUE_CAPACITY,
    STAT_FAST,
    STAT_FIELDS,
    Command,
    QueueView,
    Status,
    build_command,
    slot_offset,
)

UNIT = 0x8000


class ProtocolTimeout(Exception):
    """No completion arrived for a command in time."""


@dataclass(frozen=True)
class Completion:
    id: int
    status: int
    data: int

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS

    def __str__(self) -> str:
        name = Status(self.status).name if self.status < len(Status) else str(self.status)
        return f"{name} data={self.data}"


class ShareAllocator:
    """First-fit allocation of 32 KiB units of the share."""

    def __init__(self, size: int) -> None:
        self.units = size // UNIT
        self._used = bytearray(self.units)
        self._lengths: dict[int, int] = {}

    def alloc(self, size: int) -> int:
        need = max(1, -(-size // UNIT))
        run = 0
        for unit in range(self.units):
            run = run + 1 if not self._used[unit] else 0
            if run == need:
                first = unit - need + 1
                self._used[first : unit + 1] = b"\1" * need
                self._lengths[first] = need
                return first * UNIT
        raise MemoryError(f"no {size} bytes free in the share")

    def free(self, offset: int) -> None:
        first = offset // UNIT
        need = self._lengths.pop(first)
        self._used[first : first + need] = bytes(need)


class Client:
    """Speaks the protocol over any ClientTransport."""

    def __init__(self, transport: ClientTransport, timeout: float = 10.0) -> None:
        self.transport = transport
        self.timeout = timeout
        self.cmdq = QueueView(transport.command, SharedIndexWords(transport.command))
        self.cmplq = QueueView(transport.completion, SharedIndexWords(transport.completion))
        self.share = transport.data
        self.allocator = ShareAllocator(len(self.share))
        self._free_ids: deque[int] = deque(range(QUEUE_CAPACITY))
        self._arrived: dict[int, deque[Completion]] = defaultdict(deque)
        self.sent = 0
        self.received = 0

    # -- raw protocol -------------------------------------------------------------------------

    def new_id(self) -> int:
        return self._free_ids.popleft()

    def send(self, cmd: int, params: bytes = b"", cmd_id: int | None = None) -> int:
        """Queue one command (no signal yet); returns its id."""
        if cmd_id is None:
            cmd_id = self.new_id()
        message = build_command(cmd_id, cmd, params)
        deadline = time.monotonic() + self.timeout
        while not self.cmdq.push(message):
            self.collect()
            if time.monotonic() > deadline:
                raise ProtocolTimeout("command queue stayed full")
            self.transport.signal()
            self.transport.wait(0.01)
        self.sent += 1
        return cmd_id

    def signal(self) -> None:
        self.transport.signal()

    def collect(self) -> int:
        """Consume every published completion into the arrival table."""
        n = 0
        while True:
            head = self.cmplq.head
            if self.cmplq.tail == head:
                break
            off = slot_offset(head)
            cid, status, data = COMPLETION_FAST.unpack_from(self.cmplq.region, off)
            self.cmplq.publish_head(head + 1)
            self._arrived[cid].append(Completion(cid, status, data))
            n += 1
        self.received += n
        return n

    def wait(self, cmd_id: int, timeout: float | None = None) -> Completion:
        """The completion for `cmd_id` (its id is free again afterwards)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._arrived.get(cmd_id):
            if not self.collect():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProtocolTimeout(f"no completion for id {cmd_id}")
                self.transport.wait(min(remaining, 0.05))
        completion = self._arrived[cmd_id].popleft()
        if not self._arrived[cmd_id]:
            del self._arrived[cmd_id]
        if cmd_id < QUEUE_CAPACITY and cmd_id not in self._free_ids:
            self._free_ids.append(cmd_id)
        return completion

    def pending_completions(self) -> dict[int, int]:
        """How many unclaimed completions arrived for each id (extra ones are protocol bugs)."""
        self.collect()
        return {cid: len(q) for cid, q in self._arrived.items()}

    def call(self, cmd: Command, **fields: Any) -> Completion:
        cmd_id = self.call_later(cmd, **fields)
        self.signal()
        return self.wait(cmd_id)

    def call_later(self, cmd: Command, **fields: Any) -> int:
        """Queue a command without signalling: its id, to `wait` for after a `signal`."""
        params = PARAMS[cmd].build(fields) if PARAMS[cmd].subcons else b""
        return self.send(cmd, params)

    # -- the share ----------------------------------------------------------------------------

    def put(self, data: bytes) -> dict[str, int]:
        offset = self.allocator.alloc(len(data))
        self.share[offset : offset + len(data)] = data
        return {"offset": offset, "size": len(data)}

    def reserve(self, size: int) -> dict[str, int]:
        return {"offset": self.allocator.alloc(size), "size": size}

    def release(self, buf: dict[str, int]) -> None:
        self.allocator.free(buf["offset"])

    def take(self, buf: dict[str, int], length: int) -> bytes:
        return bytes(self.share[buf["offset"] : buf["offset"] + length])

    @contextlib.contextmanager
    def path_buffers(self, *paths: bytes | str) -> Iterator[list[dict[str, int]]]:
        bufs = [self.put(os.fsencode(p)) for p in paths]
        try:
            yield bufs
        finally:
            for buf in bufs:
                self.release(buf)

    # -- one method per command -----------------------------------------------------------------

    def initialise(self) -> Completion:
        return self.call(Command.INITIALISE)

    def deinitialise(self) -> Completion:
        return self.call(Command.DEINITIALISE)

    def open(self, path: bytes | str, flags: int) -> Completion:
        with self.path_buffers(path) as (p,):
            return self.call(Command.FILE_OPEN, path=p, flags=flags)

    def close(self, handle: int) -> Completion:
        return self.call(Command.FILE_CLOSE, fd=handle)

    def stat(self, path: bytes | str) -> tuple[Completion, dict[str, int] | None]:
        with self.path_buffers(path) as (p,):
            out = self.reserve(UNIT)
            try:
                done = self.call(Command.STAT, path=p, buf=out)
                record = STAT_FAST.unpack(self.take(out, STAT_FAST.size)) if done.ok else None
            finally:
                self.release(out)
        return done, dict(zip(STAT_FIELDS, record, strict=True)) if record else None

    def read(self, handle: int, offset: int, size: int) -> tuple[Completion, bytes]:
        out = self.reserve(size)
        try:
            done = self.call(Command.FILE_READ, fd=handle, offset=offset, buf=out)
            return done, self.take(out, done.data) if done.ok else b""
        finally:
            self.release(out)

    def write(self, handle: int, offset: int, data: bytes) -> Completion:
        buf = self.put(data)
        try:
            return self.call(Command.FILE_WRITE, fd=handle, offset=offset, buf=buf)
        finally:
            self.release(buf)

    def size(self, handle: int) -> Completion:
        return self.call(Command.FILE_SIZE, fd=handle)

    def truncate(self, handle: int, length: int) -> Completion:
        return self.call(Command.FILE_TRUNCATE, fd=handle, length=length)

    def sync(self, handle: int) -> Completion:
        return self.call(Command.FILE_SYNC, fd=handle)

    def rename(self, old: bytes | str, new: bytes | str) -> Completion:
        with self.path_buffers(old, new) as (a, b):
            return self.call(Command.RENAME, old_path=a, new_path=b)

    def remove(self, path: bytes | str) -> Completion:
        with self.path_buffers(path) as (p,):
            return self.call(Command.FILE_REMOVE, path=p)

    def mkdir(self, path: bytes | str) -> Completion:
        with self.path_buffers(path) as (p,):
            return self.call(Command.DIR_CREATE, path=p)

    def rmdir(self, path: bytes | str) -> Completion:
        with self.path_buffers(path) as (p,):
            return self.call(Command.DIR_REMOVE, path=p)

    def opendir(self, path: bytes | str) -> Completion:
        with self.path_buffers(path) as (p,):
            return self.call(Command.DIR_OPEN, path=p)

    def readdir(self, handle: int, size: int = UNIT) -> tuple[Completion, bytes | None]:
        out = self.reserve(size)
        try:
            done = self.call(Command.DIR_READ, fd=handle, buf=out)
            return done, self.take(out, done.data) if done.ok else None
        finally:
            self.release(out)

    def closedir(self, handle: int) -> Completion:
        return self.call(Command.DIR_CLOSE, fd=handle)

    def seekdir(self, handle: int, location: int) -> Completion:
        return self.call(Command.DIR_SEEK, fd=handle, loc=location)

    def telldir(self, handle: int) -> Completion:
        return self.call(Command.DIR_TELL, fd=handle)

    def rewinddir(self, handle: int) -> Completion:
        return self.call(Command.DIR_REWIND, fd=handle)

    def listdir(self, path: bytes | str) -> list[bytes]:
        """Every name in a directory, read to END_OF_DIRECTORY, as MicroPython's listdir does."""
        opened = self.opendir(path)
        if not opened.ok:
            raise OSError(opened.status, f"DIR_OPEN {path!r}: {opened}")
        names = []
        try:
            while True:
                done, name = self.readdir(opened.data)
                if not done.ok or name is None:
                    break
                names.append(name)
        finally:
            self.closedir(opened.data)
        return names

    def close_transport(self) -> None:
        self.transport.close()


def vmfs_command() -> list[str]:
    """How to run the `vmfs` CLI of this very installation."""
    return [sys.executable, "-m", "vmfs"]


class LoopbackServer:
    """A `vmfs serve --loopback` subprocess and a connected client, for tests, demo and bench."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        directory: str | os.PathLike[str] | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        data_size: int = 0x4000000,
        start: bool = True,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="vmfs-")
        base = Path(self._tmp.name)
        self.root = Path(root) if root else base / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.directory = Path(directory) if directory else base / "loopback"
        create_loopback_dir(self.directory, data_size=data_size)
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else self.directory / "driver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = Client(LoopbackClientTransport(self.directory))
        if start:
            self.start()

    def start(self) -> None:
        served = [] if "--block-device" in self.extra_args else ["--root", str(self.root)]
        args = [*vmfs_command(), "serve", "--loopback", str(self.directory), *served]
        args += self.extra_args
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)

    def stop(self, sig: int = 15, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        self.stop()
        self.client.close_transport()
        self._tmp.cleanup()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
