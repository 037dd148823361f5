"""Recording command streams: the recorder `vmfs serve --record` attaches and the starting tree.

The file format (version 2, and reading version 1) lives in `vmfs.tracefile`; replay in
`vmfs.tools.replay`. Everything the client gave (paths, write data, the starting tree) is
recorded in full, so a session replays as it ran; what the driver produced (read data, stat
records, names) keeps its first `cap` bytes and, when longer, its size and SHA-256, since
replay recomputes it.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from vmfs.errors import UsageError, VmfsError
from vmfs.tracefile import VERSION, Blob, Packer, TraceError, encode
from vmfs.wire import (
    FAST_PARAMS,
    NUM_COMMANDS,
    STAT_SIZE,
    Command,
    Status,
    buffer_ok,
    flat_names,
    slot_offset,
)

DEFAULT_CAP = 64 * 1024
WORDS = struct.Struct("<6Q")

INPUT_BUFFERS: dict[int, tuple[str, ...]] = {
    Command.FILE_OPEN: ("path",),
    Command.STAT: ("path",),
    Command.FILE_WRITE: ("buf",),
    Command.RENAME: ("old_path", "new_path"),
    Command.FILE_REMOVE: ("path",),
    Command.DIR_CREATE: ("path",),
    Command.DIR_REMOVE: ("path",),
    Command.DIR_OPEN: ("path",),
}


def fields(cmd: int, words: list[int] | tuple[int, ...]) -> dict[str, int]:
    """The command's parameters by flat name (`path.offset`, `fd`, ...); {} for bad types."""
    if cmd >= NUM_COMMANDS:
        return {}
    values = FAST_PARAMS[cmd].unpack_from(WORDS.pack(*words))
    return dict(zip(flat_names(Command(cmd)), values, strict=True))


def output_length(cmd: int, status: int, data: int) -> int:
    """How many bytes a completed command wrote into its output buffer."""
    if status != Status.SUCCESS:
        return 0
    if cmd == Command.FILE_READ:
        return data
    if cmd == Command.STAT:
        return STAT_SIZE
    if cmd == Command.DIR_READ:
        return data + 1
    return 0


# ---------------------------------------------------------------------------------------------
# The starting tree.


def snapshot(root: str | os.PathLike[str], packer: Packer) -> tuple[list[Any] | None, str]:
    """The whole tree under `root` as header entries, or None (and why) when it cannot be read."""
    base = Path(root)
    total = 0
    try:
        entries: list[Any] = [["d", "", stat.S_IMODE(base.stat().st_mode)]]  # the root itself
        for dirpath, dirnames, filenames in os.walk(base, onerror=_raise):
            dirnames.sort()
            here = Path(dirpath)
            for name in sorted(dirnames + filenames):
                path = here / name
                rel = os.fsdecode(path.relative_to(base))
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    entries.append(["l", rel, os.fsdecode(os.readlink(path))])
                elif stat.S_ISDIR(st.st_mode):
                    entries.append(["d", rel, stat.S_IMODE(st.st_mode)])
                elif stat.S_ISREG(st.st_mode):
                    content = path.read_bytes()
                    total += len(content)
                    blob = Blob.of(0, content, packer=packer)
                    entries.append(["f", rel, stat.S_IMODE(st.st_mode), blob])
    except OSError as e:
        return None, f"cannot read the served tree ({e}): replay with --root"
    return entries, f"{len(entries)} entries, {total} bytes"


def _raise(error: OSError) -> None:
    raise error


def build_tree(entries: Any, root: Path) -> None:
    """Recreate a snapshot's tree under `root` (modes applied to directories last)."""
    root.mkdir(parents=True, exist_ok=True)
    dirs = []
    try:
        for entry in entries:
            path = root / entry[1]
            if Path(entry[1]).is_absolute() or ".." in Path(entry[1]).parts:
                raise ValueError(f"path {entry[1]!r} outside the tree")
            if entry[0] == "d":
                path.mkdir(exist_ok=True)
                dirs.append((path, entry[2]))
            elif entry[0] == "f":
                path.write_bytes(entry[3].data())
                path.chmod(entry[2])
            elif entry[0] == "l":
                os.symlink(entry[2], path)
            else:
                raise ValueError(f"unknown entry {entry[0]!r}")
    except (TypeError, ValueError, IndexError, AttributeError, OSError) as e:
        raise TraceError(f"the trace's starting tree cannot be built: {e}") from None
    for path, mode in reversed(dirs):
        path.chmod(mode)


# ---------------------------------------------------------------------------------------------
# Recording.


class Recorder:
    """Appends what the engine takes and writes to a trace, through `Engine.tap`."""

    def __init__(
        self,
        engine: Any,
        read: Callable[[int, int], bytes],
        share_size: int,
        out: IO[bytes],
        root: str | None,
        cap: int = DEFAULT_CAP,
        compress: bool = True,
    ) -> None:
        self.engine = engine
        self.read = read
        self.share_size = share_size
        self.out = out
        self.cap = cap
        self.packer = Packer(compress)
        self.batch = 0
        self.commands = self.completions = 0
        self._new_batch = False
        self._taken: dict[int, tuple[int, list[int]]] = {}
        umask = os.umask(0)
        os.umask(umask)
        tree, note = (None, "not directory mode: replay with --root")
        if root:
            tree, note = snapshot(root, self.packer)
        self._write(
            {
                "vmfs_trace": VERSION,
                "share_size": share_size,
                "cap": cap,
                "umask": umask,
                "tree": tree,
                "tree_note": note,
            }
        )
        self.out.flush()
        self._pump = engine.pump
        engine.pump = self.pump
        engine.tap = self.tap

    @classmethod
    def attach(
        cls,
        driver: Any,
        path: str | os.PathLike[str],
        cap: int = DEFAULT_CAP,
        compress: bool = True,
    ) -> Recorder:
        """Record everything `driver` serves into `path` (appended)."""
        if cap < 0:
            raise UsageError(f"--record-cap must be 0 or more bytes, not {cap}")
        root = driver.options.root if driver.mounter is None else None
        try:
            out = open(path, "ab")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise VmfsError(f"cannot record to {os.fspath(path)}: {e.strerror or e}") from None
        share = driver.share
        return cls(driver.engine, share.copy_in, share.size, out, root, cap, compress)

    def pump(self) -> bool:
        """One engine batch; commands taken during it share a batch number."""
        self._new_batch = True
        try:
            return self._pump()
        finally:
            self.out.flush()

    def tap(self, event: str, req: Any) -> None:
        if event == "take":
            self._take(req)
        elif event == "complete":
            self._complete(req)

    def _take(self, req: Any) -> None:
        if self._new_batch:
            self.batch += 1
            self._new_batch = False
        off = slot_offset(req.index) + 16
        words = list(WORDS.unpack_from(self.engine.port.cmdq.region, off))
        self._taken[req.index] = (req.cmd, words)
        record: dict[str, Any] = {
            "t": "c", "b": self.batch, "i": req.index, "id": req.id, "c": req.cmd, "w": words,
        }  # fmt: skip
        params = fields(req.cmd, words)
        inputs = []
        for name in INPUT_BUFFERS.get(req.cmd, ()):
            offset, size = params[f"{name}.offset"], params[f"{name}.size"]
            if buffer_ok(offset, size, self.share_size):
                inputs.append(Blob.of(offset, self.read(offset, size), packer=self.packer))
        if inputs:
            record["in"] = inputs
        self.commands += 1
        self._write(record)

    def _complete(self, req: Any) -> None:
        record: dict[str, Any] = {"t": "r", "i": req.index, "id": req.id, "s": req.status}
        record["d"] = req.data
        cmd, words = self._taken.pop(req.index, (req.cmd, None))
        n = output_length(cmd, req.status, req.data)
        if n and words is not None:
            params = fields(cmd, words)
            offset, size = params["buf.offset"], params["buf.size"]
            if buffer_ok(offset, min(n, size), self.share_size):
                out = self.read(offset, min(n, size))
                record["out"] = Blob.of(offset, out, self.cap, self.packer)
        self.completions += 1
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        self.out.writelines(encode(record))

    def close(self) -> None:
        """Stop recording and mark the session complete with its end record."""
        if self.engine.tap == self.tap:
            self.engine.tap = None
        if not self.out.closed:
            self._write({"t": "e", "commands": self.commands, "completions": self.completions})
            self.out.close()
