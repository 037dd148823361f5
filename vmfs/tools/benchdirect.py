"""The in-process baselines of `vmfs bench`: the same work with no protocol and no driver.

`sync` does every operation with a plain synchronous call (pread, pwrite, statx, open/close,
mkdir...) through the native module, one at a time. `uring` keeps `qd` of them in flight on a
`vmfs.uring.Ring`, submitted and reaped in batches (directory chains run inline, as they have
no useful io_uring form here). Both are driven from Python, so they are the limit as Python sees
it; `vmfsload --direct` gives the C figure.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from vmfs._native import ffi, lib
from vmfs.tools.benchload import (
    DATA_FILE,
    MIX_DIR,
    READS,
    WORD,
    WRITE_FILE,
    Recorder,
    Workload,
    block_order,
    pattern,
)
from vmfs.uring import STATX_BASIC_STATS, Ring, new_open_how, new_statx

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
AT_FDCWD = -100


class Direct:
    """Per-slot state and buffers for one in-process run."""

    def __init__(self, root: Path, wl: Workload, rec: Recorder, file_size: int) -> None:
        self.root, self.wl, self.rec = root, wl, rec
        self.bs = max(wl.bs, 8)
        self.nblocks = file_size // self.bs
        self.seq = 0
        self.rng = random.Random(7)
        self.order = block_order(wl.kind, self.nblocks)
        self.bufs = [ffi.new("char[]", self.bs) for _ in range(wl.qd)]
        for buf in self.bufs:
            ffi.memmove(buf, b"\xa5" * self.bs, self.bs)
        self.offs = [0] * wl.qd
        self.state = [0] * wl.qd
        self.handles = [0] * wl.qd
        self.t = [0] * wl.qd
        ndir = max(1, wl.qd // 4) if wl.kind == "mixed" else 0
        self.dir_role = [i >= wl.qd - ndir for i in range(wl.qd)]
        self.dirpaths = [str(root / MIX_DIR / f"d{i}").encode() for i in range(wl.qd)]
        self.data_path = str(root / DATA_FILE).encode()
        self.statx = [new_statx() for _ in range(wl.qd)]
        flags = os.O_RDWR | os.O_CREAT if wl.kind == "write" else os.O_RDONLY
        name = WRITE_FILE if wl.kind == "write" else DATA_FILE
        self.fd = os.open(root / name, flags | os.O_CLOEXEC, 0o644)
        self.how = new_open_how(os.O_RDONLY | os.O_CLOEXEC, 0, 0)

    def close(self) -> None:
        os.close(self.fd)
        for i, h in enumerate(self.handles):
            if h and self.state[i] == 1:
                os.close(h)

    def next_offset(self, i: int) -> int:
        kind = self.wl.kind
        if kind in ("seqread", "write"):
            blk = self.seq
        else:
            blk = self.order[self.seq] if self.order else self.rng.randrange(self.nblocks)
        self.seq = (self.seq + 1) % self.nblocks
        self.offs[i] = blk * self.bs
        return self.offs[i]

    def dir_step(self, i: int) -> None:
        """One step of a directory chain, done synchronously."""
        path, st = self.dirpaths[i], self.state[i]
        try:
            if st == 0:
                os.mkdir(path, 0o755)
            elif st == 1:
                self.handles[i] = os.open(path, O_DIR)
            elif st == 2:
                with os.scandir(self.handles[i]) as it:
                    next(it, None)
            elif st == 3:
                os.close(self.handles[i])
            else:
                os.rmdir(path)
        except OSError:
            self.rec.errors += 1
        self.state[i] = (st + 1) % 5
        self.rec.done(self.t[i], time.perf_counter_ns(), 0)

    def finish(self, i: int, res: int) -> None:
        """Account a finished read/write/stat/open/close whose result is `res`."""
        kind, now = self.wl.kind, time.perf_counter_ns()
        if kind == "openclose":
            if self.state[i] == 0:
                if res < 0:
                    self.rec.errors += 1
                    self.rec.done(self.t[i], now, 0)
                    return
                self.handles[i], self.state[i], self.offs[i] = res, 1, self.t[i]
                return
            self.state[i] = 0
            self.rec.errors += res < 0
            self.rec.done(self.offs[i], now, 0)
            return
        if kind == "stat":
            self.rec.errors += res < 0
            self.rec.done(self.t[i], now, 0)
            return
        bad = res != self.bs
        if not bad and kind in READS:
            bad = WORD.unpack_from(ffi.buffer(self.bufs[i], 8))[0] != pattern(self.offs[i])
        self.rec.errors += bad
        self.rec.done(self.t[i], now, max(res, 0))


def run_sync(root: Path, wl: Workload, rec: Recorder, file_size: int) -> None:
    d = Direct(root, wl, rec, file_size)
    kind, bs, fd, clock = wl.kind, d.bs, d.fd, time.perf_counter_ns
    parked = [False] * wl.qd
    try:
        while not all(parked):
            for i in range(wl.qd):
                if parked[i]:
                    continue
                d.t[i] = clock()
                if d.dir_role[i]:
                    if d.state[i] == 0 and not rec.may_start(5):
                        parked[i] = True
                        continue
                    d.dir_step(i)
                    continue
                if not (kind == "openclose" and d.state[i] == 1) and not rec.may_start():
                    parked[i] = True
                    continue
                if kind == "write":
                    res = lib.vmfs_pwrite_full(fd, d.bufs[i], bs, d.next_offset(i))
                elif kind == "stat":
                    res = lib.vmfs_statx(AT_FDCWD, d.data_path, 0, STATX_BASIC_STATS, d.statx[i])
                elif kind == "openclose":
                    if d.state[i] == 0:
                        res = lib.vmfs_openat2_once(
                            -100, d.data_path, os.O_RDONLY | os.O_CLOEXEC, 0, 0
                        )
                    else:
                        os.close(d.handles[i])
                        res = 0
                else:
                    res = lib.vmfs_pread_full(fd, d.bufs[i], bs, d.next_offset(i), 0)
                d.finish(i, res)
    finally:
        d.close()


def _prep(ring: Ring, d: Direct, i: int) -> bool:
    kind = d.wl.kind
    if kind == "write":
        return ring.write(d.fd, d.bufs[i], d.bs, d.next_offset(i), i)
    if kind == "stat":
        return ring.statx(AT_FDCWD, d.data_path, 0, d.statx[i], i)
    if kind == "openclose":
        if d.state[i] == 0:
            return ring.openat2(AT_FDCWD, d.data_path, d.how, i)
        return ring.close_fd(d.handles[i], i)
    return ring.read(d.fd, d.bufs[i], d.bs, d.next_offset(i), i)


def run_uring(root: Path, wl: Workload, rec: Recorder, file_size: int) -> None:
    d = Direct(root, wl, rec, file_size)
    ring = Ring(max(8, wl.qd * 2))
    ready = list(range(wl.qd))
    inflight = 0
    clock = time.perf_counter_ns
    try:
        while True:
            again = []
            for i in ready:
                d.t[i] = clock()
                if d.dir_role[i]:
                    if d.state[i] == 0 and not rec.may_start(5):
                        continue
                    d.dir_step(i)
                    again.append(i)
                    continue
                if not (wl.kind == "openclose" and d.state[i] == 1) and not rec.may_start():
                    continue
                if not _prep(ring, d, i):
                    raise RuntimeError("io_uring submission queue full")
                inflight += 1
            ready = again
            if not inflight:
                if not ready:
                    break
                continue
            ring.submit()
            if not ready:
                ring.wait(1)
            for tag, res in ring.reap():
                inflight -= 1
                d.finish(tag, res)
                ready.append(tag)
    finally:
        ring.close()
        d.close()
