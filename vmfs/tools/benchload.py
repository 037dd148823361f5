"""The workloads of `vmfs bench` and the protocol load generator that drives `vmfs serve`.

The generator must not be what limits the figures: it keeps `qd` commands in flight with one
struct pack per command straight into the command slot, publishes a batch with one index store
and one signal, and reaps every published completion in one pass. Its own CPU time is measured
(`Result.client_cpu_us_per_op`) so a client-bound run says so.
"""

from __future__ import annotations

import os
import random
import resource
import select
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmfs.client import LoopbackServer
from vmfs.wire import COMPLETION_FAST, Command, OpenFlags, Status, slot_offset

DATA_FILE = "bench.dat"
WRITE_FILE = "bench.wr"
MIX_DIR = "bench.mix"
AUX = 4096  # per slot: path at +0, STAT / DIR_READ output at +2048
AUX_OUT = 2048
MiB = 1 << 20
CMD = struct.Struct("<QQ6Q")
WORD = struct.Struct("<Q")
COLD = "coldread"  # random reads of a file on a disk filesystem, page cache dropped first
READS = frozenset({"seqread", "randread", "lat", "mixed", COLD})


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # seqread randread write stat openclose mixed lat list coldread
    bs: int
    qd: int
    title: str
    opt_in: bool = False  # run only when `--workloads` names it by its beginning


WORKLOADS = (
    Workload("seqread-4k-qd1", "seqread", 4096, 1, "sequential read 4 KiB, qd 1"),
    Workload("seqread-4k-qd16", "seqread", 4096, 16, "sequential read 4 KiB, qd 16"),
    Workload("seqread-4k-qd64", "seqread", 4096, 64, "sequential read 4 KiB, qd 64"),
    Workload("randread-4k-qd64", "randread", 4096, 64, "random read 4 KiB, qd 64"),
    Workload("seqread-64k-qd16", "seqread", 65536, 16, "sequential read 64 KiB, qd 16"),
    Workload("write-64k-qd16", "write", 65536, 16, "write 64 KiB, qd 16"),
    Workload("stat-qd64", "stat", 0, 64, "STAT, qd 64"),
    Workload("openclose-qd16", "openclose", 0, 16, "open + close pairs, qd 16"),
    Workload("mixed-qd16", "mixed", 4096, 16, "mixed reads + directory ops, qd 16"),
    Workload("lat-4k-qd1", "lat", 4096, 1, "latency 4 KiB, qd 1"),
    Workload("list-100k-qd16", "list", 0, 16, "listing 100 000 names (ops = names), qd 16"),
    Workload(
        "cold-randread-4k-qd64",
        COLD,
        4096,
        64,
        "random read 4 KiB, qd 64, cold cache on ext4 (disk)",
        opt_in=True,
    ),
)
TARGETS = ("vmfs", "bounce", "no-uring", "record", "sync", "uring")
# `record` is vmfs with `--record` (a trace file in the run's directory) to show its cost.
TARGET_ARGS = {"vmfs": [], "bounce": ["--bounce"], "no-uring": ["--no-uring"], "record": []}


@dataclass
class Result:
    workload: str
    target: str
    ops: int = 0
    seconds: float = 0.0
    bytes: int = 0
    errors: int = 0
    ops_per_s: float = 0.0
    mib_per_s: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    p999_us: float = 0.0
    driver_cpu_us_per_op: float | None = None
    client_cpu_us_per_op: float = 0.0
    client_bound: bool = False
    notes: list[str] = field(default_factory=list)


class Recorder:
    """Ops, bytes and latencies of one measured run (after its warm-up)."""

    def __init__(self, seconds: float, ops: int, warmup: int, budget: int = 0) -> None:
        self.seconds, self.limit, self.warmup = seconds, ops, warmup
        self.budget = budget  # ops that may be issued at all, warm-up included (0: no cap)
        self.lat = array("Q")
        self.ops = self.bytes = self.errors = self.started = self.issued = 0
        self.t0 = self.t_end = 0
        self.deadline = 0.0
        self.cpu0 = 0.0
        self.on_start: Callable[[], None] = lambda: None

    def may_start(self, cost: int = 1) -> bool:
        if self.budget:
            self.issued += cost
            if self.issued > self.budget:
                return False
        if self.warmup > 0:
            return True
        if self.limit:
            self.started += cost
            return self.started <= self.limit
        return time.monotonic() < self.deadline

    def done(self, t_issue: int, now: int, nbytes: int) -> None:
        if self.warmup > 0:
            self.warmup -= 1
            if self.warmup == 0:
                self.begin(now)
            return
        self.ops += 1
        self.bytes += nbytes
        self.lat.append(now - t_issue)
        self.t_end = now

    def begin(self, now: int) -> None:
        self.t0 = self.t_end = now
        self.deadline = time.monotonic() + self.seconds
        self.cpu0 = _self_cpu()
        self.on_start()

    def result(self, workload: str, target: str) -> Result:
        secs = max((self.t_end - self.t0) / 1e9, 1e-9)
        lat = sorted(self.lat)
        pct = [
            lat[min(len(lat) - 1, int(p * (len(lat) - 1) + 0.5))] / 1e3 if lat else 0.0
            for p in (0.5, 0.99, 0.999)
        ]
        ops = max(self.ops, 1)
        return Result(
            workload,
            target,
            self.ops,
            round(secs, 4),
            self.bytes,
            self.errors,
            round(self.ops / secs, 1),
            round(self.bytes / MiB / secs, 2),
            *(round(p, 2) for p in pct),
            client_cpu_us_per_op=round((_self_cpu() - self.cpu0) / ops * 1e6, 2),
        )


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pattern(offset: int) -> int:
    """The u64 stored at every aligned offset of the data file (reads check it)."""
    return (offset * 0x9E3779B97F4A7C15 + 0x5EED) & ((1 << 64) - 1)


def block_order(kind: str, nblocks: int) -> list[int] | None:
    """For the cold workload, every block once in a shuffled order (the recorder's budget ends
    the run before any block comes round again): each read is a page-cache miss."""
    if kind != COLD:
        return None
    order = list(range(nblocks))
    random.Random(7).shuffle(order)
    return order


def ensure_data_file(root: Path, size: int) -> None:
    path = root / DATA_FILE
    if path.exists() and path.stat().st_size == size:
        with open(path, "rb") as f:
            f.seek(size - 8)
            if WORD.unpack(f.read(8))[0] == pattern(size - 8):
                return
    with open(path, "wb") as f:
        chunk = 1 << 20
        for base in range(0, size, chunk):
            f.write(array("Q", [pattern(base + i * 8) for i in range(chunk // 8)]).tobytes())
        f.truncate(size)


# ---------------------------------------------------------------------------------------------
# The protocol load generator.


class Slot:
    __slots__ = ("buf", "dir_role", "dirpath", "handle", "idx", "kind", "off", "path", "state", "t")

    def __init__(self, idx: int, buf: int) -> None:
        self.idx, self.buf = idx, buf
        self.state = self.handle = self.t = self.off = 0
        self.kind = 0
        self.dir_role = False
        self.path = (buf + AUX - AUX, 0)
        self.dirpath = b""


def wait_for_doorbell(poller: Any, tr: Any, srv: Any, workload: str) -> None:
    """Sleep until the driver rings (200 ms at most); a driver that died ends the run."""
    poller.poll(200)
    try:
        os.read(tr.notify_fd(), 4096)
    except BlockingIOError:
        pass
    if srv.process is not None and srv.process.poll() is not None:
        raise RuntimeError(f"driver exited during {workload}:\n{srv.log()[-2000:]}")


def run_protocol(srv: LoopbackServer, wl: Workload, rec: Recorder, file_size: int) -> None:
    """Keep wl.qd commands in flight until the recorder says stop; account each answer."""
    client = srv.client
    tr = client.transport
    cmd_region, cmpl_region, share = tr.command, tr.completion, client.share
    cmdq, cmplq = client.cmdq, client.cmplq
    load, store = cmdq.words.load, cmdq.words.store
    cload, cstore = cmplq.words.load, cmplq.words.store
    bs = max(wl.bs, 8)
    nblocks = file_size // bs
    stride = (bs + 4095) // 4096 * 4096 + AUX
    rng = random.Random(7)
    order = block_order(wl.kind, nblocks)
    handle = 0
    if wl.kind == "write":
        opened = client.open(WRITE_FILE, OpenFlags.READ_WRITE | OpenFlags.CREATE)
        handle = opened.data
    elif wl.kind != "openclose" and wl.kind != "stat":
        handle = client.open(DATA_FILE, OpenFlags.READ_ONLY).data
    ndir = max(1, wl.qd // 4) if wl.kind == "mixed" else 0
    slots = []
    for i in range(wl.qd):
        s = Slot(i, 65536 + stride * i)
        aux = s.buf + stride - AUX
        name = DATA_FILE.encode()
        s.dir_role = i >= wl.qd - ndir
        if s.dir_role:
            name = f"{MIX_DIR}/d{i}".encode()
        share[aux : aux + len(name)] = name
        s.path = (aux, len(name))
        if wl.kind == "write":
            share[s.buf : s.buf + bs] = b"\xa5" * bs
        slots.append(s)
    seq = 0
    tail = load(8)
    chead = cload(0)
    idle = list(reversed(slots))
    inflight = 0
    pack = CMD.pack_into
    irq = tr._irq
    poller = select.poll()
    poller.register(tr.notify_fd(), select.POLLIN)
    clock = time.perf_counter_ns
    words = WORD.unpack_from

    def issue(s: Slot, off: int) -> bool:
        nonlocal seq
        kind = wl.kind
        if kind == "openclose" and s.state == 1:
            pack(cmd_region, off, s.idx, Command.FILE_CLOSE, s.handle, 0, 0, 0, 0, 0)
            return True
        if s.dir_role:
            if s.state == 0 and not rec.may_start(5):
                return False
            step = (
                (Command.DIR_CREATE, Command.DIR_OPEN, Command.DIR_READ)[s.state]
                if s.state < 3
                else (Command.DIR_CLOSE if s.state == 3 else Command.DIR_REMOVE)
            )
            if step == Command.DIR_READ:
                pack(
                    cmd_region,
                    off,
                    s.idx,
                    step,
                    s.handle,
                    s.path[0] + AUX_OUT,
                    AUX - AUX_OUT,
                    0,
                    0,
                    0,
                )
            elif step == Command.DIR_CLOSE:
                pack(cmd_region, off, s.idx, step, s.handle, 0, 0, 0, 0, 0)
            else:
                pack(cmd_region, off, s.idx, step, s.path[0], s.path[1], 0, 0, 0, 0)
            s.kind = step
            return True
        if not rec.may_start():
            return False
        if kind == "stat":
            pack(
                cmd_region,
                off,
                s.idx,
                Command.STAT,
                *s.path,
                s.path[0] + AUX_OUT,
                AUX - AUX_OUT,
                0,
                0,
            )
        elif kind == "openclose":
            pack(cmd_region, off, s.idx, Command.FILE_OPEN, *s.path, 0, 0, 0, 0)
        else:
            if kind in ("seqread", "write"):
                blk = seq
            else:
                blk = order[seq] if order else rng.randrange(nblocks)
            seq = (seq + 1) % nblocks
            s.off = blk * bs
            op = Command.FILE_WRITE if kind == "write" else Command.FILE_READ
            pack(cmd_region, off, s.idx, op, handle, s.off, s.buf, bs, 0, 0)
        return True

    while True:
        pushed = 0
        space = 511 - (tail - load(0))
        while idle and pushed < space:
            s = idle.pop()
            if not issue(s, slot_offset(tail)):
                continue
            s.t = clock()
            tail += 1
            pushed += 1
        if pushed:
            store(8, tail)
            try:
                os.write(irq, b"\1")
            except BlockingIOError:
                pass
            inflight += pushed
        if not inflight:
            break
        ctail = cload(8)
        if ctail == chead:
            wait_for_doorbell(poller, tr, srv, wl.name)
            continue
        now = clock()
        while chead != ctail:
            cid, status, data = COMPLETION_FAST.unpack_from(cmpl_region, slot_offset(chead))
            chead += 1
            s = slots[cid]
            inflight -= 1
            idle.append(s)
            account(wl, s, status, data, rec, now, share, bs, words)
        cstore(0, chead)
    if handle:
        client.close(handle)


def account(
    wl: Workload,
    s: Slot,
    status: int,
    data: int,
    rec: Recorder,
    now: int,
    share: Any,
    bs: int,
    words: Any,
) -> None:
    if s.dir_role:
        ok = status == Status.SUCCESS or (
            s.kind == Command.DIR_READ and status == Status.END_OF_DIRECTORY
        )
        if not ok:
            rec.errors += 1
        if s.state == 1:
            s.handle = data
        s.state = (s.state + 1) % 5 if ok or s.state in (2, 3) else (4 if s.state == 1 else 0)
        rec.done(s.t, now, 0)
        return
    if wl.kind == "openclose":
        if s.state == 0:
            if status == Status.SUCCESS:
                s.handle, s.state, s.off = data, 1, s.t
                return
            rec.errors += 1
            rec.done(s.t, now, 0)
            return
        s.state = 0
        if status != Status.SUCCESS:
            rec.errors += 1
        rec.done(s.off, now, 0)
        return
    bad = status != Status.SUCCESS or (wl.kind != "stat" and data != bs)
    if not bad and wl.kind in READS:
        bad = words(share, s.buf)[0] != pattern(s.off)
    rec.errors += bad
    rec.done(s.t, now, data if wl.kind != "stat" else 0)
