"""Big directories made fast, and listings read through the protocol in pipelined batches.

Expected names come from what the test created (or from the host's own view of the directory),
never from vmfs.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hostile_helpers import message, params, send_many, wait_all

from vmfs.client import Client, Completion
from vmfs.wire import Command

SUCCESS, ERROR, END_OF_DIRECTORY = 0, 1, 14
NAME_ROOM = 256
BATCH = 255  # DIR_READs queued at once (below the queue's 511 slots)


@contextmanager
def memory_tmpdir(fallback: Path) -> Iterator[Path]:
    """A directory on tmpfs when the machine has one (names are then cheap), else `fallback`."""
    parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    if parent is None:
        fallback.mkdir(parents=True, exist_ok=True)
        yield fallback
        return
    with tempfile.TemporaryDirectory(prefix="vmfs-listing-", dir=parent) as tmp:
        yield Path(tmp)


def entry_name(n: int) -> str:
    """Distinct names of varying length, so chunk boundaries fall at varying places."""
    return f"{n:07d}{'abcdefghijklmnopqrstu'[: n % 21]}"


def make_names(directory: Path, count: int) -> set[bytes]:
    """`count` names in `directory`: hard links to one file (a dentry each, no inode)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory.parent / f".{directory.name}-target"
    os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        link = os.link
        for n in range(count):
            link(target, entry_name(n), dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return {entry_name(n).encode() for n in range(count)}


class Reader:
    """DIR_READs of one handle, queued `BATCH` at a time, each into its own 256-byte buffer
    (at `out`, a share offset; readers used one after another may share it)."""

    def __init__(self, client: Client, handle: int, first_id: int, out: int) -> None:
        self.client, self.handle, self.next_id, self.out = client, handle, first_id, out
        self.ended = False

    def read(self, count: int) -> list[bytes]:
        """Up to `count` names (fewer only at the end of the listing)."""
        names: list[bytes] = []
        share = self.client.share
        while len(names) < count and not self.ended:
            n_batch = min(BATCH, count - len(names))
            ids = range(self.next_id, self.next_id + n_batch)
            self.next_id += n_batch
            messages = [
                message(
                    cmd_id,
                    Command.DIR_READ,
                    struct.pack("<QQQ", self.handle, self.out + NAME_ROOM * k, NAME_ROOM),
                )
                for k, cmd_id in enumerate(ids)
            ]
            done = wait_all(self.client, send_many(self.client, messages), timeout=60)
            for k, cmd_id in enumerate(ids):
                got = done[cmd_id]
                if got.status == END_OF_DIRECTORY:
                    assert got.data == 0, got
                    rest = [done[i].status for i in ids[k:]]
                    assert set(rest) == {END_OF_DIRECTORY}, rest
                    self.ended = True
                    break
                assert got.status == SUCCESS, got
                at = self.out + NAME_ROOM * k
                assert 1 <= got.data <= 255 and share[at + got.data] == 0, got
                names.append(bytes(share[at : at + got.data]))
        return names

    def read_all(self) -> list[bytes]:
        names = []
        while not self.ended:
            names += self.read(1 << 16)
        return names


def output_area(client: Client) -> int:
    """Share room for one batch of DIR_READ outputs."""
    return client.reserve(BATCH * NAME_ROOM)["offset"]


def open_many(client: Client, path: bytes, count: int, first_id: int) -> list[Completion]:
    """`count` DIR_OPENs of `path` queued together; their completions in order."""
    where = client.put(path)
    messages = [
        message(first_id + n, Command.DIR_OPEN, params(Command.DIR_OPEN, path=where))
        for n in range(count)
    ]
    done = wait_all(client, send_many(client, messages), timeout=120)
    return [done[first_id + n] for n in range(count)]


def close_all(client: Client, handles: list[int], first_id: int) -> list[Completion]:
    messages = [
        message(first_id + n, Command.DIR_CLOSE, struct.pack("<Q", h))
        for n, h in enumerate(handles)
    ]
    done = wait_all(client, send_many(client, messages), timeout=120)
    return [done[first_id + n] for n in range(len(handles))]
