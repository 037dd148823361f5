"""`vmfs replay`: feed a recorded command stream to a fresh driver and compare every completion.

The driver runs on a fresh copy of the starting tree (the trace's snapshot, or `--root`), over
the loopback transport with a share of the recorded size and the recorded umask. Each recorded
batch is laid out (inputs written at their recorded share offsets, commands written into their
slots), published with one tail store and one signal, and awaited before the next.

Normalisation rules (everything not listed is compared exactly):
- Handles: the n-th handle the recording was issued stands for the n-th the replay was issued.
  FILE_OPEN/DIR_OPEN results are mapped, and the `fd` parameter of later commands is translated
  through the map before sending (values never issued, i.e. forged ones, pass unchanged).
- Stat records: `mode` is compared (only its file type when the header says `"mode_bits":
  false`, as for a trace recorded on FAT, which keeps no permissions); `size` and `nlink` too,
  except for directories (their size and link count are filesystem bookkeeping); `dev`, `ino`,
  `rdev`, `uid`, `gid`, `blksize`, `blocks`, `used` and the six time fields are ignored, as they
  depend on the machine and moment.
- DIR_READ: the names read through one handle (until DIR_CLOSE, DIR_REWIND or the end) are
  compared as multisets, since listing order is the filesystem's own.
- Data beyond the per-record cap is compared by size and SHA-256.

A trace replays OK only when every command in it was checked: a cut or malformed file is refused
before anything runs, and commands without a recorded completion make the verdict INCOMPLETE.
With `--driver 'CMD {dir} {root}'` the stream goes to any program serving the loopback
transport in {dir} with {root} as its served directory, instead of `vmfs serve`.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmfs.client import LoopbackServer
from vmfs.driver.trace import WORDS, build_tree, fields, output_length
from vmfs.errors import UsageError, VmfsError
from vmfs.tracefile import Blob, Session, TraceError, read_trace
from vmfs.wire import (
    COMPLETION_FAST,
    MESSAGE_HEADER,
    NUM_COMMANDS,
    QUEUE_CAPACITY,
    STAT_FAST,
    STAT_FIELDS,
    STAT_SIZE,
    Command,
    Status,
    flat_names,
    slot_offset,
)

HANDLE_ISSUERS = frozenset({Command.FILE_OPEN, Command.DIR_OPEN})
FD_COMMANDS = frozenset(c for c in Command if flat_names(c)[:1] == ("fd",))
LISTING_ENDS = frozenset({Command.DIR_CLOSE, Command.DIR_REWIND})
STAT_COMPARED = ("mode", "size", "nlink")
MAX_REPORTED = 20

Row = tuple[str, str, str]


def command_name(cmd: int) -> str:
    return Command(cmd).name if cmd < NUM_COMMANDS else f"type {cmd}"


def status_name(status: int) -> str:
    return Status(status).name if status < len(Status) else str(status)


def describe(record: dict[str, Any], sent_fd: int | None = None) -> str:
    """A command as a line: type, then its parameters by name."""
    params = fields(record["c"], record["w"])
    shown = []
    for name, value in params.items():
        text = f"{name}={value}"
        if name == "fd" and sent_fd is not None and sent_fd != value:
            text += f" (replayed as {sent_fd})"
        shown.append(text)
    for b in record.get("in", ()):
        data = b.data()
        shown.append(f"in@{b.offset}={data[:40]!r}{'...' if len(data) > 40 else ''}")
    return f"{command_name(record['c'])} " + " ".join(shown)


def _bytes_rows(name: str, expected: Blob, actual: bytes) -> list[Row]:
    """Compare recorded output (maybe cut at the cap) with what the replay wrote."""
    if expected.digest is not None:
        size, digest = expected.size, expected.digest
        got = hashlib.sha256(actual).hexdigest()
        if size == len(actual) and digest == got:
            return []
        return [
            (name, f"{size} bytes sha256 {digest[:16]}", f"{len(actual)} bytes sha256 {got[:16]}")
        ]
    want = expected.data()
    if want == actual:
        return []
    at = next((i for i, (a, b) in enumerate(zip(want, actual, strict=False)) if a != b), None)
    at = min(len(want), len(actual)) if at is None else at
    return [(f"{name}[{at}:]", repr(want[at : at + 24]), repr(actual[at : at + 24]))]


def _stat_rows(expected: bytes, actual: bytes, mode_bits: bool = True) -> list[Row]:
    """Rows for the compared stat fields; without `mode_bits` only the file type of `mode`."""
    if len(expected) != STAT_SIZE:
        return [("stat record", f"{STAT_SIZE} bytes", f"{len(expected)} bytes in the trace")]
    want = dict(zip(STAT_FIELDS, STAT_FAST.unpack(expected), strict=True))
    got = dict(zip(STAT_FIELDS, STAT_FAST.unpack(actual), strict=True))
    if not mode_bits:
        want["mode"], got["mode"] = stat.S_IFMT(want["mode"]), stat.S_IFMT(got["mode"])
    compared = ("mode",) if stat.S_ISDIR(want["mode"]) else STAT_COMPARED
    return [
        (f"stat.{name}", oct(want[name]) if name == "mode" else str(want[name]),
         oct(got[name]) if name == "mode" else str(got[name]))
        for name in compared
        if want[name] != got[name]
    ]  # fmt: skip


class DriverCommand(LoopbackServer):
    """A loopback server started from a command template (`CMD {dir} {root}`), not `vmfs serve`."""

    def __init__(self, template: str, **kwargs: Any) -> None:
        try:
            self.template = shlex.split(template)
            if not self.template or not any("{dir}" in word for word in self.template):
                raise ValueError("it must name the loopback directory as {dir}")
            for word in self.template:
                word.format(dir="", root="")
        except (ValueError, KeyError, IndexError) as e:
            example = "'CMD --loopback {dir} --root {root}'"
            raise UsageError(f"--driver {template!r}: {e} (e.g. {example})") from None
        super().__init__(start=False, **kwargs)

    def start(self) -> None:
        args = [word.format(dir=self.directory, root=self.root) for word in self.template]
        with open(self.log_path, "ab") as log_file:
            try:
                self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
            except OSError as e:
                raise VmfsError(f"cannot run the driver {args[0]}: {e.strerror or e}") from None


class Replay:
    """One replay of one trace file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        report: Callable[[str], None] = print,
        driver: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.root = Path(root) if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise VmfsError(f"--root {self.root}: not an existing directory")
        self.timeout = timeout
        self.report = report
        self.driver = driver
        self.commands = self.batches = self.matched = self.mismatched = 0
        self.handles_mapped = self.stats_compared = self.listings_compared = 0
        self.unchecked = self.cut_inputs = 0
        self.mode_bits = True

    # -- set-up -------------------------------------------------------------------------------

    def _prepare_root(self, first: Session, target: Path) -> None:
        if self.root is not None:
            try:
                shutil.copytree(self.root, target, symlinks=True)
            except (OSError, shutil.Error) as e:
                raise VmfsError(f"cannot copy --root {self.root}: {e}") from None
        elif first.header.get("tree") is not None:
            build_tree(first.header["tree"], target)
        else:
            note = first.header.get("tree_note", "")
            raise UsageError(f"{self.path}: the trace holds no starting tree ({note}); give --root")

    def _server(self, base: Path, share_size: int) -> LoopbackServer:
        where: dict[str, Any] = {
            "root": base / "root",
            "directory": base / "loopback",
            "data_size": share_size,
        }
        if self.driver is None:
            return LoopbackServer(start=False, **where)
        return DriverCommand(self.driver, **where)

    def _start(self, server: LoopbackServer, header: dict[str, Any]) -> None:
        old = os.umask(header.get("umask", 0o022))
        try:
            server.start()
        finally:
            os.umask(old)

    def run(self) -> int:
        """0 when every command was checked and matched, 1 otherwise; a trace that cannot be
        replayed (cut short, malformed, missing) raises VmfsError."""
        sessions = read_trace(self.path)
        total = sum(len(s.commands) for s in sessions)
        if not total:
            raise TraceError(f"{self.path}: the trace holds no commands: nothing to check")
        with tempfile.TemporaryDirectory(prefix="vmfs-replay-") as tmp:
            base = Path(tmp)
            share_size = sessions[0].header["share_size"]
            try:
                server = self._server(base, share_size)
            except (OSError, ValueError, OverflowError) as e:
                raise TraceError(f"{self.path}: no share of {share_size} bytes here: {e}") from None
            try:
                shutil.rmtree(base / "root")
                self._prepare_root(sessions[0], base / "root")
                for session in sessions:
                    self._start(server, session.header)
                    alive = self._session(server, session)
                    server.stop()
                    if not alive:
                        break
            finally:
                server.close()
        verdict = "FAILED" if self.mismatched else "INCOMPLETE" if self.unchecked else "OK"
        self.report(
            f"vmfs replay: {verdict} {self.path.name}: {len(sessions)} session(s), "
            f"{self.commands} commands in {self.batches} batches: {self.matched} matched, "
            f"{self.mismatched} mismatched ({self.handles_mapped} handles mapped, "
            f"{self.stats_compared} stat records compared on mode/size/nlink, "
            f"{self.listings_compared} listings compared as sets"
            + (
                f", {self.unchecked} commands not checked: the trace holds no completion for "
                f"them (cut short, or its driver was killed)"
                if self.unchecked
                else ""
            )
            + (
                f", {total - self.commands} commands not sent: the driver had exited"
                if self.commands < total
                else ""
            )
            + (
                f", {self.cut_inputs} inputs cut at the recording cap: only their head was sent"
                if self.cut_inputs
                else ""
            )
            + ")"
        )
        return 0 if verdict == "OK" else 1

    # -- one session --------------------------------------------------------------------------

    def _session(self, server: LoopbackServer, session: Session) -> bool:
        self.mode_bits = session.header.get("mode_bits", True) is not False
        handles: dict[int, int] = {}
        listings: dict[int, tuple[dict[str, Any], list[bytes], list[bytes]]] = {}
        client = server.client
        for number, batch in enumerate(session.batches(), 1):
            if len(batch) > QUEUE_CAPACITY:
                raise TraceError(f"{self.path}: batch {number} holds more commands than a queue")
            sent: list[int | None] = []
            tail = client.cmdq.tail
            for k, record in enumerate(batch):
                words = list(record["w"])
                fd = None
                if record["c"] in FD_COMMANDS:
                    fd = words[0] = handles.get(words[0], words[0])
                sent.append(fd)
                for b in record.get("in", ()):
                    data = b.data()
                    self.cut_inputs += b.cut
                    if b.offset + len(data) > len(client.share):
                        raise TraceError(f"{self.path}: batch {number}: an input off the share")
                    client.share[b.offset : b.offset + len(data)] = data
                off = slot_offset(tail + k)
                region = client.cmdq.region
                MESSAGE_HEADER.pack_into(region, off, record["id"], record["c"])
                WORDS.pack_into(region, off + 16, *words)
            client.cmdq.publish_tail(tail + len(batch))
            client.signal()
            arrived = self._collect(server, len(batch))
            self.batches += 1
            by_id: dict[int, deque[tuple[int, int]]] = defaultdict(deque)
            for cid, status, data in arrived:
                by_id[cid].append((status, data))
            for record, fd in zip(batch, sent, strict=True):
                got = by_id[record["id"]].popleft() if by_id[record["id"]] else None
                expected = session.completions.get(record["i"])
                if expected is None:
                    self.commands += 1
                    self.unchecked += 1
                    continue
                rows = self._compare(record, expected, got, client, handles, listings)
                self._verdict(number, record, fd, rows)
            for cid, extra in by_id.items():
                for status, data in extra:
                    row = ("completion", "none", f"id {cid} {status_name(status)} data={data}")
                    self._mismatch(f"batch {number}: a completion no command asked for", [row])
            if server.process is None or server.process.poll() is not None:
                self._mismatch(
                    f"batch {number}: the driver exited", [("driver", "running", "exited")]
                )
                self.report(server.log()[-2000:])
                return False
        for record, want, got in listings.values():
            self._verdict(0, record, None, self._listing_rows(want, got))
        return True

    def _collect(self, server: LoopbackServer, count: int) -> list[tuple[int, int, int]]:
        """Completions published for this batch: `count` of them, or what came in time."""
        q = server.client.cmplq
        arrived: list[tuple[int, int, int]] = []
        deadline = time.monotonic() + self.timeout
        while len(arrived) < count:
            head = q.head
            if q.tail == head:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (server.process and server.process.poll() is not None):
                    break
                server.client.transport.wait(min(remaining, 0.05))
                continue
            arrived.append(COMPLETION_FAST.unpack_from(q.region, slot_offset(head)))
            q.publish_head(head + 1)
        return arrived

    # -- comparing ----------------------------------------------------------------------------

    def _compare(
        self,
        record: dict[str, Any],
        expected: dict[str, Any],
        got: tuple[int, int] | None,
        client: Any,
        handles: dict[int, int],
        listings: dict[int, tuple[dict[str, Any], list[bytes], list[bytes]]],
    ) -> list[Row]:
        cmd = record["c"]
        want = f"{status_name(expected['s'])} data={expected['d']}"
        if got is None:
            return [("completion", want, f"none within {self.timeout:g}s")]
        status, data = got
        rows: list[Row] = []
        if status != expected["s"]:
            rows.append(("status", status_name(expected["s"]), status_name(status)))
        both_ok = not rows and status == Status.SUCCESS
        if cmd in HANDLE_ISSUERS and both_ok:
            handles[expected["d"]] = data
            self.handles_mapped += 1
            if cmd == Command.DIR_OPEN:
                listings[expected["d"]] = (record, [], [])
        elif cmd == Command.DIR_READ and both_ok:
            listing = listings.setdefault(record["w"][0], (record, [], []))
            listing[1].append(expected["out"].data() if "out" in expected else b"")
            listing[2].append(self._output(client, record, status, data))
        elif data != expected["d"]:
            rows.append(("data", str(expected["d"]), str(data)))
        if both_ok and cmd == Command.FILE_READ and "out" in expected:
            rows += _bytes_rows("read", expected["out"], self._output(client, record, status, data))
        elif both_ok and cmd == Command.STAT and "out" in expected:
            self.stats_compared += 1
            actual = self._output(client, record, status, 0)
            rows += _stat_rows(expected["out"].data(), actual, self.mode_bits)
        if cmd in LISTING_ENDS and record["w"][0] in listings:
            _, names_want, names_got = listings.pop(record["w"][0])
            rows += self._listing_rows(names_want, names_got)
        return rows

    def _listing_rows(self, want: list[bytes], got: list[bytes]) -> list[Row]:
        self.listings_compared += 1
        if Counter(want) == Counter(got):
            return []
        return [("names (as a set)", repr(sorted(want)), repr(sorted(got)))]

    @staticmethod
    def _output(client: Any, record: dict[str, Any], status: int, data: int) -> bytes:
        params = fields(record["c"], record["w"])
        n = min(output_length(record["c"], status, data), params["buf.size"])
        start = params["buf.offset"]
        return bytes(client.share[start : start + n])

    # -- reporting ----------------------------------------------------------------------------

    def _verdict(self, batch: int, record: dict[str, Any], fd: int | None, rows: list[Row]) -> None:
        if batch:
            self.commands += 1
        if not rows:
            if batch:
                self.matched += 1
            return
        where = f"batch {batch}, " if batch else "end of trace, listing opened by "
        self._mismatch(
            f"{where}command #{record['i']} id {record['id']}: {describe(record, fd)}", rows
        )

    def _mismatch(self, title: str, rows: list[Row]) -> None:
        self.mismatched += 1
        if self.mismatched > MAX_REPORTED:
            return
        width = max(len(r[0]) for r in rows)
        wide = max(len(r[1]) for r in rows)
        lines = [f"vmfs replay: MISMATCH at {title}"]
        lines.append(f"    {'field':<{width}}  {'expected':<{wide}}  actual")
        lines += [f"    {f:<{width}}  {e:<{wide}}  {a}" for f, e, a in rows]
        self.report("\n".join(lines))


def main(path: str, root: str | None, timeout: float, driver: str | None = None) -> int:
    report = lambda text: print(text, file=sys.stdout, flush=True)  # noqa: E731
    return Replay(path, root, timeout, report=report, driver=driver).run()
