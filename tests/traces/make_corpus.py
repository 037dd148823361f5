"""Regenerate the replay corpus: scripted client sessions recorded through the real driver.

    .venv/bin/python tests/traces/make_corpus.py            # every trace
    .venv/bin/python tests/traces/make_corpus.py errors     # just one
    .venv/bin/python tests/traces/make_corpus.py guest      # recorded in the arm64 guest

`v1/` keeps the corpus as first recorded in trace format version 1, which replay still reads.

Each session speaks the raw protocol the way a real LionsOS client does (ids, path formats,
buffer placement), so the traces exercise what those clients rely on (docs/protocol.md "Parties
and the life of a command").
"""

from __future__ import annotations

import os
import re
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from vmfs.client import UNIT, Client, Completion, LoopbackServer
from vmfs.tracefile import read_trace, write_trace
from vmfs.wire import Command, build_command

HERE = Path(__file__).resolve().parent
C = Command
RO, WO, RW, CREATE = 0, 1, 2, 4


def words(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


class Session:
    """One client: blocking calls with id 0, or bursts with distinct ids in one batch."""

    def __init__(self, client: Client) -> None:
        self.c = client

    def call(self, cmd: int, params: bytes = b"", cmd_id: int = 0) -> Completion:
        self.c.send(cmd, params, cmd_id)
        self.c.signal()
        return self.c.wait(cmd_id)

    def burst(self, commands: list[tuple[int, int, bytes]]) -> dict[int, Completion]:
        """(id, type, params) written into their slots, then published with one tail store."""
        q = self.c.cmdq
        tail = q.tail
        for k, (cmd_id, cmd, params) in enumerate(commands):
            q.write_slot(tail + k, build_command(cmd_id, cmd, params))
        q.publish_tail(tail + len(commands))
        self.c.signal()
        return {cmd_id: self.c.wait(cmd_id) for cmd_id, _, _ in commands}

    def at(self, unit: int, data: bytes) -> tuple[int, int]:
        """Lay `data` at share unit `unit` (the client library's 32 KiB carving)."""
        self.c.share[unit * UNIT : unit * UNIT + len(data)] = data
        return unit * UNIT, len(data)

    def path_call(self, cmd: int, path: bytes, *rest: int) -> Completion:
        return self.call(cmd, words(*self.at(0, path), *rest))

    def read(self, handle: int, offset: int, size: int, unit: int = 2) -> Completion:
        return self.call(C.FILE_READ, words(handle, offset, unit * UNIT, size))

    def write(self, handle: int, offset: int, data: bytes, unit: int = 2) -> Completion:
        return self.call(C.FILE_WRITE, words(handle, offset, *self.at(unit, data)))

    def stat(self, path: bytes) -> Completion:
        return self.path_call(C.STAT, path, UNIT, UNIT)

    def listdir(self, path: bytes) -> None:
        """DIR_OPEN, DIR_READ until a non-SUCCESS, DIR_CLOSE: MicroPython's os.listdir."""
        opened = self.path_call(C.DIR_OPEN, path)
        if not opened.ok:
            return
        while self.call(C.DIR_READ, words(opened.data, UNIT, UNIT)).ok:
            pass
        self.call(C.DIR_CLOSE, words(opened.data))


# ---------------------------------------------------------------------------------------------


def micropython_tree(root: Path) -> None:
    (root / "main.py").write_text("import util\nprint(util.greet('vmfs'))\n" * 40)
    (root / "boot.py").write_text("# boot\n")
    (root / "lib").mkdir()
    (root / "lib" / "util.py").write_text("def greet(name):\n    return 'hello ' + name\n")


def micropython(s: Session) -> None:
    """A MicroPython VFS session: paths with a trailing NUL on open, FILE_SIZE after each open."""
    s.call(C.INITIALISE)
    h = s.path_call(C.FILE_OPEN, b"main.py\0", RO).data  # exec main.py
    size = s.call(C.FILE_SIZE, words(h)).data
    offset = 0
    while True:
        done = s.read(h, offset, 1024)
        if not done.ok or done.data == 0:
            break
        offset += done.data
    assert offset == size
    s.call(C.FILE_CLOSE, words(h))
    h = s.path_call(C.FILE_OPEN, b"log.txt\0", WO | CREATE).data  # open("log.txt", "w")
    s.call(C.FILE_SIZE, words(h))
    s.call(C.FILE_TRUNCATE, words(h, 0))
    s.write(h, 0, b"boot ok\n")
    s.call(C.FILE_CLOSE, words(h))
    h = s.path_call(C.FILE_OPEN, b"log.txt\0", WO | CREATE).data  # open("log.txt", "a")
    end = s.call(C.FILE_SIZE, words(h)).data
    s.write(h, end, "température 21°C\n".encode())
    r = s.path_call(C.FILE_OPEN, b"/log.txt\0", RO).data  # a reader while the writer is open
    s.call(C.FILE_SYNC, words(h))  # flush(), then read through the other handle
    s.call(C.FILE_SIZE, words(r))
    s.read(r, 0, 4096)
    s.read(r, 4096, 4096)
    s.call(C.FILE_CLOSE, words(r))
    s.call(C.FILE_CLOSE, words(h))
    s.listdir(b".")
    s.listdir(b"lib")
    s.stat(b"lib/util.py")
    s.stat(b"/lib")
    s.stat(b"nope.py")
    s.path_call(C.FILE_OPEN, b"missing.txt\0", RO)
    s.path_call(C.DIR_CREATE, "unicode_测试_目录".encode())
    old, new = b"log.txt", "unicode_测试_目录/log.txt".encode()
    s.call(C.RENAME, words(*s.at(0, old), *s.at(1, new)))
    s.listdir("unicode_测试_目录".encode())
    s.path_call(C.FILE_REMOVE, new)
    s.path_call(C.DIR_REMOVE, "unicode_测试_目录".encode())
    s.call(C.INITIALISE)  # soft reset of the REPL


def posix_tree(root: Path) -> None:
    (root / "data").mkdir()
    (root / "data" / "config.txt").write_bytes(b"x=1\n")


CHUNK = 32 * 1024


def posix(s: Session) -> None:
    """A POSIX program: STAT for O_EXCL, FILE_TRUNCATE 0 for O_TRUNC, 32 KiB chunked I/O."""
    s.call(C.INITIALISE)
    assert not s.stat(b"/data/out.bin").ok  # open(O_WRONLY|O_CREAT|O_EXCL|O_TRUNC)
    h = s.path_call(C.FILE_OPEN, b"/data/out.bin", WO | CREATE).data
    s.call(C.FILE_TRUNCATE, words(h, 0))
    payload = bytes(range(256)) * (70 * 1024 // 256) + b"tail"
    for offset in range(0, len(payload), CHUNK):
        s.write(h, offset, payload[offset : offset + CHUNK])
    s.call(C.FILE_CLOSE, words(h))
    h = s.path_call(C.FILE_OPEN, b"/data/out.bin", RO).data  # fopen("r")
    s.call(C.FILE_SIZE, words(h))  # fseek(SEEK_END)
    offset = 0
    while (done := s.read(h, offset, CHUNK)).ok and done.data == CHUNK:
        offset += CHUNK
    s.call(C.FILE_CLOSE, words(h))
    s.stat(b"/data/out.bin")  # O_EXCL on an existing file: EEXIST, no open
    h = s.path_call(C.FILE_OPEN, b"/data/../data/./out.bin", RW).data  # open(O_RDWR|O_TRUNC)
    s.call(C.FILE_TRUNCATE, words(h, 0))
    s.write(h, 0, b"short\n")
    s.call(C.FILE_SIZE, words(h))
    s.call(C.FILE_CLOSE, words(h))
    s.call(C.FILE_CLOSE, words(h))  # the dup()ed descriptor's close: INVALID_FD
    s.stat(b"/")
    s.path_call(C.DIR_CREATE, b"/scratch/")
    s.call(C.RENAME, words(*s.at(0, b"/data/config.txt"), *s.at(1, b"/scratch/config.txt")))
    s.stat(b"/scratch/config.txt")  # unlink(): STAT first (EISDIR check), then FILE_REMOVE
    s.path_call(C.FILE_REMOVE, b"/scratch/config.txt")
    s.stat(b"/scratch")  # rmdir()
    s.path_call(C.DIR_REMOVE, b"/scratch")


def pipelined(s: Session) -> None:
    """MicroPython's fs_raw: many commands with distinct ids in one batch each."""
    s.call(C.INITIALISE)
    names = [f"/burst/f{n}".encode() for n in range(8)]
    batch = [(1, C.DIR_CREATE, words(*s.at(0, b"/burst")))]
    for n, name in enumerate(names):
        batch.append((2 + n, C.FILE_OPEN, words(*s.at(1 + n, name), RW | CREATE)))
    done = s.burst(batch)
    handles = [done[2 + n].data for n in range(len(names))]
    batch = []
    for n, h in enumerate(handles):
        data = f"file {n}\n".encode() * (n + 1) * 50
        batch.append((10 + n, C.FILE_WRITE, words(h, 0, *s.at(10 + n, data))))
        batch.append((20 + n, C.FILE_SIZE, words(h)))
        batch.append((30 + n, C.FILE_SYNC, words(h)))
    s.burst(batch)
    batch = []
    for n, h in enumerate(handles):
        batch.append((40 + n, C.FILE_READ, words(h, 5, (20 + n) * UNIT, UNIT)))
        batch.append((50 + n, C.FILE_CLOSE, words(h)))
        batch.append((60 + n, C.STAT, words(*s.at(n, names[n]), (30 + n) * UNIT, UNIT)))
    batch.append((70, C.DIR_OPEN, words(*s.at(40, b"/burst"))))
    opened = s.burst(batch)[70].data
    batch = [(80 + n, C.DIR_READ, words(opened, (50 + n) * UNIT, UNIT)) for n in range(10)]
    batch += [(95, C.DIR_TELL, words(opened)), (96, C.DIR_REWIND, words(opened))]
    batch += [(100 + n, C.DIR_READ, words(opened, (60 + n) * UNIT, UNIT)) for n in range(9)]
    batch += [(98, C.DIR_TELL, words(opened)), (99, C.DIR_CLOSE, words(opened))]
    s.burst(batch)


def errors_tree(root: Path) -> None:
    (root / "file.txt").write_bytes(b"contents\n")
    (root / "dir").mkdir()
    (root / "dir" / "inner.txt").write_bytes(b"inner\n")


def errors(s: Session) -> None:
    """Missing files, bad handles, bad buffers, invalid command types, before INITIALISE."""
    share = len(s.c.share)
    s.path_call(C.FILE_OPEN, b"file.txt", RO)  # not initialised yet: ERROR
    s.burst([(7, 20, b""), (8, 99, words(1, 2, 3)), (9, (1 << 64) - 1, b"")])
    s.call(C.INITIALISE)
    for path in (b"nope.txt", b"/no/such/dir/x", b"file.txt/x", b"../../etc/passwd"):
        s.path_call(C.FILE_OPEN, path, RO)
    s.path_call(C.FILE_OPEN, b"/no/such/dir/x", RW | CREATE)
    s.path_call(C.FILE_OPEN, b"file.txt", 8)  # unknown flag bit
    s.path_call(C.FILE_OPEN, b"file.txt", 3)  # access mode 3
    s.path_call(C.FILE_OPEN, b"dir", RO)  # a directory
    s.call(C.FILE_OPEN, words(0, 0, RO))  # empty path buffer
    s.call(C.FILE_OPEN, words(share, 8, RO))  # path outside the share
    s.call(C.FILE_OPEN, words(share - 4, 8, RO))  # path running off the share's end
    s.path_call(C.FILE_OPEN, b"\0file.txt", RO)  # empty before the NUL
    s.path_call(C.FILE_OPEN, b"a/" * 2100, RO)  # longer than 4095
    s.path_call(C.FILE_OPEN, b"x" * 256, RW | CREATE)  # a 256-byte name
    h = s.path_call(C.FILE_OPEN, b"file.txt", RO).data
    s.call(C.FILE_READ, words(12345, 0, 0, 64))  # never-issued handle
    s.call(C.FILE_READ, words(h, 0, share, 64))  # buffer outside the share
    s.call(C.FILE_READ, words(h, 0, UNIT, 0))  # empty buffer
    s.call(C.FILE_READ, words(h, 1 << 63, UNIT, 64))  # offset beyond any file
    s.write(h, 0, b"nope")  # read-only handle: INVALID_WRITE
    s.call(C.FILE_TRUNCATE, words(h, 0))
    s.read(h, 100, 64)  # past EOF: SUCCESS, 0 bytes
    w = s.path_call(C.FILE_OPEN, b"file.txt", WO).data
    s.read(w, 0, 64)  # write-only handle: INVALID_READ
    s.call(C.FILE_CLOSE, words(w, 0xDEADBEEF, 0xFFFF, 1, 2, 3))  # garbage in unused words
    d = s.path_call(C.DIR_OPEN, b"dir").data
    s.call(C.DIR_READ, words(h, UNIT, UNIT))  # a file handle where a directory one belongs
    s.read(d, 0, 64)  # a directory handle where a file one belongs
    s.call(C.DIR_READ, words(d, UNIT, 100))  # too small for a name
    s.call(C.DIR_SEEK, words(d, (1 << 64) - 1))  # loc -1
    s.call(C.DIR_SEEK, words(d, 1000))
    s.call(C.DIR_TELL, words(d))
    s.call(C.DIR_READ, words(d, UNIT, UNIT))  # END_OF_DIRECTORY after seeking past the end
    s.call(C.DIR_CLOSE, words(d))
    s.call(C.DIR_CLOSE, words(d))  # closed twice
    s.call(C.STAT, words(*s.at(0, b"file.txt"), UNIT, 100))  # stat buffer too small
    s.stat(b"ghost")
    s.path_call(C.DIR_CREATE, b"dir")  # exists
    s.path_call(C.DIR_REMOVE, b"dir")  # not empty
    s.path_call(C.DIR_REMOVE, b"ghost")
    s.path_call(C.DIR_REMOVE, b"/")
    s.path_call(C.FILE_REMOVE, b"dir")  # a directory
    s.call(C.RENAME, words(*s.at(0, b"ghost"), *s.at(1, b"other")))
    s.call(C.DEINITIALISE)
    s.call(C.FILE_SIZE, words(h))  # not initialised: ERROR
    s.call(C.INITIALISE)
    s.call(C.FILE_SIZE, words(h))  # handles died with DEINITIALISE: INVALID_FD
    s.call(C.FILE_CLOSE, words(h))


CORPUS: dict[str, tuple[Callable[[Path], None], Callable[[Session], None]]] = {
    "micropython": (micropython_tree, micropython),
    "posix": (posix_tree, posix),
    "pipelined": (lambda root: None, pipelined),
    "errors": (errors_tree, errors),
}


def record(name: str, out_dir: Path = HERE) -> Path:
    """Run one scripted session against a fresh driver with `--record`; the trace's path."""
    make_tree, session = CORPUS[name]
    out = out_dir / f"{name}.trace"
    out.unlink(missing_ok=True)
    old = os.umask(0o022)
    try:
        with tempfile.TemporaryDirectory(prefix="vmfs-corpus-") as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            make_tree(root)
            with LoopbackServer(
                root=root, directory=Path(tmp) / "loop", extra_args=["--record", str(out)]
            ) as server:
                session(Session(server.client))
    finally:
        os.umask(old)
    return out


GUEST_TREE_NOTE = "an empty FAT disk, formatted on the host before boot"


def record_guest(out_dir: Path = HERE) -> Path:
    """The demo's fs_session run in the arm64 guest and recorded there: fs_driver_init passes
    `--record` when VMFS_RECORD is set, into the run directory the host shares over 9p."""
    from vmfs.guest import disk
    from vmfs.guest.build import build
    from vmfs.guest.session import ProtocolClient, fs_session
    from vmfs.guest.vmm import DRIVER_REAL, GUEST_RUN, Vmm

    out = out_dir / "guest.trace"
    with tempfile.TemporaryDirectory(prefix="vmfs-corpus-") as tmp:
        image = disk.make_fat_image(Path(tmp) / "disk.img")
        env = {"VMFS_RECORD": f"{GUEST_RUN}/guest.trace"}
        with Vmm(build(), command=DRIVER_REAL, disk=image, env=env) as vmm:
            machine = vmm.machine_args()  # no NIC: QEMU's default one needs a boot ROM package
            vmm.machine_args = lambda: [*machine, "-nic", "none"]  # type: ignore[method-assign]
            vmm.prepare()
            client = ProtocolClient(vmm.client_transport(), log=lambda _: None)
            vmm.start()
            vmm.wait_ready()
            fs_session(client)
            # Stop the driver with SIGTERM and wait (a loaded host's emulated guest can take
            # longer than the agent's grace before SIGKILL), so the trace gets its end record.
            pid = re.search(r"started driver \(pid (\d+)\)", vmm.command_log())
            assert pid, vmm.command_log()
            stop = f"kill -TERM {pid[1]}; while kill -0 {pid[1]} 2>/dev/null; do sleep 0.2; done"
            vmm.exec(stop, timeout=120)
            vmm.stop()
            recorded = read_trace(vmm.run_dir / "guest.trace")
    # A block device has no starting tree in the trace; this one started empty, so say so.
    # FAT keeps no permissions (every file reads 0755), so only file types compare.
    for session in recorded:
        session.header["tree"] = [["d", "", 0o755]]
        session.header["tree_note"] = GUEST_TREE_NOTE
        session.header["mode_bits"] = False
    with open(out, "wb") as f:
        write_trace(recorded, f)
    return out


def main(names: list[str]) -> int:
    for name in names or list(CORPUS):
        path = record_guest() if name == "guest" else record(name)
        commands = sum(len(s.commands) for s in read_trace(path))
        print(f"{path.relative_to(HERE.parent.parent)}: {commands} commands")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
