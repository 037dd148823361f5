"""The directory-listing workload of `vmfs bench`: names per second from a 100 000-entry directory.

Through the driver, each of `qd` slots lists the directory on its own handle, one DIR_READ in
flight per slot, and restarts with DIR_REWIND at the end; every name counts as one op. The
in-process baseline is `os.scandir` over the same directory (io_uring has no getdents, so the
`uring` target lists the same way).
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

from vmfs.client import LoopbackServer
from vmfs.tools.benchload import CMD, Recorder, Workload, wait_for_doorbell
from vmfs.wire import COMPLETION_FAST, Command, Status, slot_offset

LIST_DIR = "bench.list"
LIST_ENTRIES = 100_000
NAME_ROOM = 256
OUT_BASE = 1 << 20  # share offset of the slots' DIR_READ buffers
READING, REWINDING = 0, 1


def list_name(n: int) -> str:
    return f"entry-{n:06d}"


def ensure_list_dir(root: Path) -> None:
    """The listed directory: LIST_ENTRIES empty files (kept between runs when complete)."""
    directory = root / LIST_DIR
    if directory.is_dir() and len(os.listdir(directory)) == LIST_ENTRIES:
        return
    directory.mkdir(exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
        for n in range(LIST_ENTRIES):
            os.close(os.open(list_name(n), flags, 0o644, dir_fd=dir_fd))
    finally:
        os.close(dir_fd)


def run_list_protocol(srv: LoopbackServer, wl: Workload, rec: Recorder) -> None:
    """Keep one DIR_READ (or DIR_REWIND) per slot in flight until the recorder says stop."""
    client = srv.client
    tr = client.transport
    cmd_region, cmpl_region, share = tr.command, tr.completion, client.share
    load, store = client.cmdq.words.load, client.cmdq.words.store
    cload, cstore = client.cmplq.words.load, client.cmplq.words.store
    handles = []
    for _ in range(wl.qd):
        opened = client.opendir(LIST_DIR)
        if not opened.ok:
            raise RuntimeError(f"DIR_OPEN {LIST_DIR}: {opened}")
        handles.append(opened.data)
    state = [READING] * wl.qd
    issued = [0] * wl.qd
    idle = list(range(wl.qd))
    inflight = 0
    tail, chead = load(8), cload(0)
    poller = select.poll()
    poller.register(tr.notify_fd(), select.POLLIN)
    clock = time.perf_counter_ns
    pack = CMD.pack_into
    out = [OUT_BASE + NAME_ROOM * i for i in range(wl.qd)]
    try:
        while True:
            pushed = 0
            space = 511 - (tail - load(0))
            while idle and pushed < space:
                i = idle.pop()
                at = slot_offset(tail)
                if state[i] == REWINDING:
                    pack(cmd_region, at, i, Command.DIR_REWIND, handles[i], 0, 0, 0, 0, 0)
                elif rec.may_start():
                    pack(
                        cmd_region, at, i, Command.DIR_READ, handles[i], out[i], NAME_ROOM, 0, 0, 0
                    )
                else:
                    continue
                issued[i] = clock()
                tail += 1
                pushed += 1
            if pushed:
                store(8, tail)
                tr.signal()
                inflight += pushed
            if not inflight:
                break
            ctail = cload(8)
            if ctail == chead:
                wait_for_doorbell(poller, tr, srv, wl.name)
                continue
            now = clock()
            while chead != ctail:
                i, status, length = COMPLETION_FAST.unpack_from(cmpl_region, slot_offset(chead))
                chead += 1
                inflight -= 1
                idle.append(i)
                if state[i] == REWINDING:
                    state[i] = READING
                    rec.errors += status != Status.SUCCESS
                elif status == Status.END_OF_DIRECTORY:
                    state[i] = REWINDING
                else:
                    bad = status != Status.SUCCESS or share[out[i] + length] != 0
                    rec.errors += bad
                    rec.done(issued[i], now, 0)
            cstore(0, chead)
    finally:
        for handle in handles:
            client.closedir(handle)


def run_list_direct(root: Path, wl: Workload, rec: Recorder) -> None:
    """The same names read in-process with os.scandir, start to end, over and over."""
    directory = root / LIST_DIR
    clock = time.perf_counter_ns
    while True:
        with os.scandir(directory) as entries:
            t = clock()
            for entry in entries:
                if not rec.may_start():
                    return
                rec.errors += not entry.name
                now = clock()
                rec.done(t, now, 0)
                t = now
