"""Recording command streams: the trace format, the recorder `vmfs serve --record` attaches, and
reading traces back (replay lives in `vmfs.replay`).

Format, version 1: JSON lines, one object per line, appended.

- Session header, written each time a driver starts recording (replay restarts its driver at
  each one): `{"vmfs_trace": 1, "share_size": N, "cap": C, "umask": U, "tree": [...] | null,
  "tree_note": "..."}`. `umask` is the driver's, so replayed creations get the same modes.
  `tree` is the served root when recording started (directory mode, at most TREE_LIMIT bytes):
  `["d", path, mode]` (path "" is the root itself), `["f", path, mode, base64]`,
  `["l", path, target]`, parents before children; null means replay needs `--root`.
- Command taken: `{"t": "c", "b": batch, "i": queue index, "id": id, "c": type,
  "w": [six u64 parameter words], "in": [blob, ...]}`. `b` numbers the batches (one engine pump
  each) within the session; `w` is the raw 48-byte parameter area, garbage included; `in` holds
  the input buffers the command reads from the share (paths, write data), in field order.
- Completion written: `{"t": "r", "i": index, "id": id, "s": status, "d": data, "out": blob}`,
  with `out` only when the command wrote into the share (read data, a stat record, a name).
- A blob is `[share offset, base64 bytes]`, or `[offset, base64 first C bytes, size, sha256 hex]`
  when the buffer is longer than the per-record cap C.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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

VERSION = 1
DEFAULT_CAP = 64 * 1024
TREE_LIMIT = 1 << 20
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
OUTPUT_COMMANDS = frozenset({Command.FILE_READ, Command.STAT, Command.DIR_READ})


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


def blob(offset: int, read: Callable[[int, int], bytes], size: int, cap: int) -> list[Any]:
    """A blob of `size` share bytes at `offset`, cut at `cap` with the whole one's digest."""
    if size <= cap:
        return [offset, base64.b64encode(read(offset, size)).decode()]
    whole = read(offset, size)
    digest = hashlib.sha256(whole).hexdigest()
    return [offset, base64.b64encode(whole[:cap]).decode(), size, digest]


def blob_bytes(b: list[Any]) -> bytes:
    """The recorded bytes of a blob (only the first `cap` of a cut one)."""
    return base64.b64decode(b[1])


# ---------------------------------------------------------------------------------------------
# The starting tree.


def snapshot(root: str | os.PathLike[str], limit: int = TREE_LIMIT) -> tuple[list[Any] | None, str]:
    """The tree under `root` as header entries, or None (and why) when it exceeds `limit`."""
    base = Path(root)
    entries: list[Any] = [["d", "", stat.S_IMODE(base.stat().st_mode)]]  # the root's own mode
    total = 0
    for dirpath, dirnames, filenames in os.walk(base):
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
                total += st.st_size
                if total > limit:
                    return None, f"tree over {limit} bytes: replay with --root"
                content = base64.b64encode(path.read_bytes()).decode()
                entries.append(["f", rel, stat.S_IMODE(st.st_mode), content])
    return entries, f"{len(entries)} entries, {total} bytes"


def build_tree(entries: list[Any], root: Path) -> None:
    """Recreate a snapshot's tree under `root` (modes applied to directories last)."""
    root.mkdir(parents=True, exist_ok=True)
    dirs = []
    for entry in entries:
        path = root / entry[1]
        if entry[0] == "d":
            path.mkdir(exist_ok=True)
            dirs.append((path, entry[2]))
        elif entry[0] == "f":
            path.write_bytes(base64.b64decode(entry[3]))
            path.chmod(entry[2])
        elif entry[0] == "l":
            os.symlink(entry[2], path)
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
        out: IO[str],
        root: str | None,
        cap: int = DEFAULT_CAP,
    ) -> None:
        self.engine = engine
        self.read = read
        self.share_size = share_size
        self.out = out
        self.cap = cap
        self.batch = 0
        self._new_batch = False
        self._taken: dict[int, tuple[int, list[int]]] = {}
        umask = os.umask(0)
        os.umask(umask)
        tree, note = snapshot(root) if root else (None, "not directory mode: replay with --root")
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
    def attach(cls, driver: Any, path: str | os.PathLike[str], cap: int = DEFAULT_CAP) -> Recorder:
        """Record everything `driver` serves into `path` (appended)."""
        root = driver.options.root if driver.mounter is None else None
        out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        return cls(driver.engine, driver.share.copy_in, driver.share.size, out, root, cap)

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
        words = list(WORDS.unpack_from(self.engine.cmdq.region, off))
        self._taken[req.index] = (req.cmd, words)
        record: dict[str, Any] = {
            "t": "c", "b": self.batch, "i": req.index, "id": req.id, "c": req.cmd, "w": words,
        }  # fmt: skip
        params = fields(req.cmd, words)
        inputs = []
        for name in INPUT_BUFFERS.get(req.cmd, ()):
            offset, size = params[f"{name}.offset"], params[f"{name}.size"]
            if buffer_ok(offset, size, self.share_size):
                inputs.append(blob(offset, self.read, size, self.cap))
        if inputs:
            record["in"] = inputs
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
                record["out"] = blob(offset, self.read, min(n, size), self.cap)
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self.engine.tap == self.tap:
            self.engine.tap = None
        self.out.close()


# ---------------------------------------------------------------------------------------------
# Reading.


class TraceError(Exception):
    """The file is not a trace this version can read."""


@dataclass
class Session:
    """One recording session: its header, commands taken (in order) and completions by index."""

    header: dict[str, Any]
    commands: list[dict[str, Any]] = field(default_factory=list)
    completions: dict[int, dict[str, Any]] = field(default_factory=dict)

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        for command in self.commands:
            if batch and command["b"] != batch[0]["b"]:
                yield batch
                batch = []
            batch.append(command)
        if batch:
            yield batch


def read_trace(path: str | os.PathLike[str]) -> list[Session]:
    """Every session in a trace; a torn last line (driver killed mid-write) is dropped."""
    sessions: list[Session] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise TraceError(f"{path}:{number}: not JSON: {e}") from e
        if "vmfs_trace" in record:
            if record["vmfs_trace"] != VERSION:
                raise TraceError(f"{path}:{number}: trace version {record['vmfs_trace']}")
            sessions.append(Session(record))
        elif not sessions:
            raise TraceError(f"{path}:{number}: record before any session header")
        elif record.get("t") == "c":
            sessions[-1].commands.append(record)
        elif record.get("t") == "r":
            sessions[-1].completions[record["i"]] = record
        else:
            raise TraceError(f"{path}:{number}: unknown record {record.get('t')!r}")
    if not sessions:
        raise TraceError(f"{path}: no session header")
    return sessions
