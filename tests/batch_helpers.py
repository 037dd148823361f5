"""Commands sent as one pipelined batch or one at a time, and the driver modes to run them in.

The protocol promises that a pipelined batch answers exactly what the same commands sent one at
a time in queue order answer; these helpers let a test state a batch once and run it both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmfs.client import UNIT, Client
from vmfs.wire import QUEUE_CAPACITY, Command, build_params

# Every way the driver can run: the fast lane, the ordinary path alone, no io_uring at all,
# and file data copied through private buffers as on device memory.
MODES = {
    "default": [],
    "no-fast-path": ["--no-fast-path"],
    "no-uring": ["--no-uring"],
    "bounce": ["--bounce"],
}


@dataclass
class Step:
    """One command: its parameters, share buffers to fill first and an output buffer to read."""

    cmd: Command
    fields: dict[str, Any]
    inputs: dict[str, bytes] = field(default_factory=dict)  # parameter name -> bytes to place
    output: tuple[str, int] | None = None  # (parameter name, size) of a buffer the driver fills


@dataclass(frozen=True)
class Answer:
    status: int
    data: int
    output: bytes  # the output buffer's first `data` bytes (reads) or all of it (STAT)


def _place(client: Client, steps: list[Step]) -> list[tuple[dict[str, Any], list[dict]]]:
    placed = []
    for step in steps:
        fields = dict(step.fields)
        bufs = []
        for name, data in step.inputs.items():
            fields[name] = client.put(data)
            bufs.append(fields[name])
        if step.output is not None:
            name, size = step.output
            fields[name] = client.reserve(max(size, 1))
            client.share[fields[name]["offset"] : fields[name]["offset"] + size] = bytes(size)
            fields[name]["size"] = size
            bufs.append(fields[name])
        placed.append((fields, bufs))
    return placed


def _answer(client: Client, step: Step, fields: dict[str, Any], done: Any) -> Answer:
    output = b""
    if step.output is not None and done.ok:
        buf = fields[step.output[0]]
        length = done.data if step.cmd in (Command.FILE_READ, Command.DIR_READ) else buf["size"]
        output = client.take(buf, min(length, buf["size"]))
    return Answer(done.status, done.data, output)


def run_pipelined(client: Client, steps: list[Step]) -> list[Answer]:
    """Every step sent before the driver is signalled once: one batch, as a pipelining client."""
    assert len(steps) <= QUEUE_CAPACITY
    placed = _place(client, steps)
    try:
        ids = [
            client.send(step.cmd, build_params(step.cmd, **fields))
            for step, (fields, _) in zip(steps, placed, strict=True)
        ]
        client.signal()
        done = [client.wait(i) for i in ids]
        return [
            _answer(client, step, fields, d)
            for step, (fields, _), d in zip(steps, placed, done, strict=True)
        ]
    finally:
        _release(client, placed)


def run_one_at_a_time(client: Client, steps: list[Step]) -> list[Answer]:
    """Each step sent and answered before the next is sent."""
    answers = []
    for step in steps:
        placed = _place(client, [step])
        try:
            fields = placed[0][0]
            done = client.call(step.cmd, **fields)
            answers.append(_answer(client, step, fields, done))
        finally:
            _release(client, placed)
    return answers


def _release(client: Client, placed: list[tuple[dict[str, Any], list[dict]]]) -> None:
    for _, bufs in placed:
        for buf in bufs:
            client.release(buf)


# -- steps ---------------------------------------------------------------------------------------


def write(handle: int, offset: int, data: bytes) -> Step:
    return Step(Command.FILE_WRITE, {"fd": handle, "offset": offset}, {"buf": data})


def read(handle: int, offset: int, size: int) -> Step:
    return Step(Command.FILE_READ, {"fd": handle, "offset": offset}, output=("buf", size))


def size(handle: int) -> Step:
    return Step(Command.FILE_SIZE, {"fd": handle})


def truncate(handle: int, length: int) -> Step:
    return Step(Command.FILE_TRUNCATE, {"fd": handle, "length": length})


def stat(path: bytes) -> Step:
    return Step(Command.STAT, {}, {"path": path}, output=("buf", 136))


def open_(path: bytes, flags: int) -> Step:
    return Step(Command.FILE_OPEN, {"flags": flags}, {"path": path})


def close(handle: int) -> Step:
    return Step(Command.FILE_CLOSE, {"fd": handle})


def sync(handle: int) -> Step:
    return Step(Command.FILE_SYNC, {"fd": handle})


def rename(old: bytes, new: bytes) -> Step:
    return Step(Command.RENAME, {}, {"old_path": old, "new_path": new})


def remove(path: bytes) -> Step:
    return Step(Command.FILE_REMOVE, {}, {"path": path})


def mkdir(path: bytes) -> Step:
    return Step(Command.DIR_CREATE, {}, {"path": path})


def rmdir(path: bytes) -> Step:
    return Step(Command.DIR_REMOVE, {}, {"path": path})


def opendir(path: bytes) -> Step:
    return Step(Command.DIR_OPEN, {}, {"path": path})


def readdir(handle: int) -> Step:
    return Step(Command.DIR_READ, {"fd": handle}, output=("buf", UNIT))


def rewinddir(handle: int) -> Step:
    return Step(Command.DIR_REWIND, {"fd": handle})


def snapshot(root: Path) -> dict[str, Any]:
    """Everything a client could observe of a tree: each path's kind and each file's bytes."""
    return dict(_walk(root, root))


def _walk(root: Path, here: Path) -> Iterator[tuple[str, Any]]:
    for child in sorted(here.iterdir()):
        name = str(child.relative_to(root))
        if child.is_dir() and not child.is_symlink():
            yield name, "dir"
            yield from _walk(root, child)
        else:
            yield name, child.read_bytes()
