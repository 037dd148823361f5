"""`vmfs bench`: the driver's throughput and latency beside what the machine itself can do.

Each workload runs against `vmfs serve` over the loopback transport (`vmfs`; `bounce` copies
file data through private buffers as on real UIO device memory; `no-uring` is every call
synchronous) and, in the same run, in-process (`sync`: plain synchronous calls, `uring`:
io_uring batches), so every figure has its ratio to the limit measured minutes apart on the
same machine. fio-style: ops/s, MiB/s, p50/p99/p99.9 latency, the driver's CPU time per op.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from vmfs.client import LoopbackServer
from vmfs.errors import UsageError
from vmfs.tools.benchcold import cold_root, cold_unavailable, drop_caches
from vmfs.tools.benchdirect import run_sync, run_uring
from vmfs.tools.benchlist import ensure_list_dir, run_list_direct, run_list_protocol
from vmfs.tools.benchload import (
    COLD,
    DATA_FILE,
    MIX_DIR,
    TARGET_ARGS,
    TARGETS,
    WORKLOADS,
    Recorder,
    Result,
    Workload,
    ensure_data_file,
    proc_cpu,
    run_protocol,
)
from vmfs.tools.benchstart import COLDSTART, run_coldstart
from vmfs.tools.benchstart import table as coldstart_table
from vmfs.tracefile import read_trace
from vmfs.wire import Command

DEFAULT_ROOT_PARENT = "/dev/shm"  # tmpfs: the figures are the driver's, not a disk's


def pin(cpu: int | None, pid: int = 0) -> None:
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


def run_one(wl: Workload, target: str, root: Path, opts: Any, progress: Progress) -> Result:
    """One workload against one target: warm up, measure, account the driver's CPU."""
    budget = opts.file_size // wl.bs if wl.kind == COLD else 0  # each block read at most once
    rec = Recorder(opts.seconds, opts.ops, min(256, max(16, opts.ops // 10 or 256)), budget)
    if wl.kind == COLD:
        drop_caches(root)
    if wl.kind == "mixed":
        shutil.rmtree(root / MIX_DIR, ignore_errors=True)
        (root / MIX_DIR).mkdir()
    progress.start(wl, target, rec)
    try:
        if target in ("sync", "uring") and wl.kind == "list":
            run_list_direct(root, wl, rec)
            result = rec.result(wl.name, target)
            if target == "uring":
                result.notes.append("io_uring has no getdents: listed as sync")
        elif target in ("sync", "uring"):
            (run_sync if target == "sync" else run_uring)(root, wl, rec, opts.file_size)
            result = rec.result(wl.name, target)
        else:
            result = _run_driver(wl, target, root, opts, rec)
    finally:
        progress.stop()
        if wl.kind == "mixed":
            shutil.rmtree(root / MIX_DIR, ignore_errors=True)
    if result.driver_cpu_us_per_op is not None:
        # Client and driver share the CPU when pinned: a client costing as much as the driver
        # per op is what limits the figure, not the driver.
        result.client_bound = result.client_cpu_us_per_op >= result.driver_cpu_us_per_op
        if result.client_bound:
            result.notes.append("client-bound: the load generator used as much CPU as the driver")
    if result.errors:
        result.notes.append(f"{result.errors} errors")
    return result


def _run_driver(wl: Workload, target: str, root: Path, opts: Any, rec: Recorder) -> Result:
    with tempfile.TemporaryDirectory(prefix="vmfs-bench-", dir=DEFAULT_ROOT_PARENT) as tmp:
        trace = Path(tmp) / "bench.trace"
        extra = TARGET_ARGS[target] + (["--record", str(trace)] if target == "record" else [])
        srv = LoopbackServer(root=root, directory=Path(tmp) / "loop", extra_args=extra)
        try:
            assert srv.process is not None
            pid = srv.process.pid
            pin(opts.pin, pid)
            done = srv.client.initialise()
            if not done.ok:
                raise RuntimeError(f"INITIALISE failed: {done}\n{srv.log()}")
            cpu = {"start": 0.0}
            rec.on_start = lambda: cpu.__setitem__("start", proc_cpu(pid))
            if wl.kind == "list":
                run_list_protocol(srv, wl, rec)
            else:
                run_protocol(srv, wl, rec, opts.file_size)
            driver_cpu = proc_cpu(pid) - cpu["start"]
        finally:
            srv.close()
        result = rec.result(wl.name, target)
        if target == "record":
            result.notes.append(trace_note(trace))
    result.driver_cpu_us_per_op = round(driver_cpu / max(result.ops, 1) * 1e6, 2)
    return result


def trace_note(trace: Path) -> str:
    """How big the recording was beside what the client wrote (warm-up included); the starting
    tree (the benchmark's data file) is left out of the ratio."""
    sessions = read_trace(trace)
    written = sum(
        r["in"][0].size for s in sessions for r in s.commands if r["c"] == Command.FILE_WRITE
    )
    tree = sum(
        len(e[3].stored) for s in sessions for e in s.header.get("tree") or () if e[0] == "f"
    )
    size = trace.stat().st_size
    per = f", {(size - tree) / written:.4f} B per B written" if written else ""
    return f"trace {size:,} bytes, {tree:,} of them the starting tree{per}"


class Progress:
    """One status line on stderr, refreshed while a run is going."""

    def __init__(self, stream: TextIO, total: int, enabled: bool) -> None:
        self.stream, self.total, self.enabled = stream, total, enabled
        self.count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, wl: Workload, target: str, rec: Recorder) -> None:
        self.count += 1
        if not self.enabled:
            return
        label = f"[{self.count}/{self.total}] {wl.name} {target}"
        self._stop.clear()

        def show() -> None:
            while not self._stop.wait(0.5):
                secs = max((rec.t_end - rec.t0) / 1e9, 1e-9)
                rate = rec.ops / secs if rec.ops else 0.0
                self.stream.write(f"\r{label}: {rec.ops} ops, {rate:,.0f} ops/s   ")
                self.stream.flush()

        self.stream.write(f"\r{label}: warming up{' ' * 20}")
        self.stream.flush()
        self._thread = threading.Thread(target=show, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.stream.write("\r" + " " * 78 + "\r")
            self.stream.flush()


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def table(results: list[Result]) -> str:
    """The human table: one row per workload, the driver beside the baselines."""
    by = {(r.workload, r.target): r for r in results}
    lines = [
        "| workload | vmfs ops/s | MiB/s | p50 / p99 / p99.9 us | driver CPU us/op | "
        "bounce ops/s | no-uring ops/s | sync limit | uring limit | vmfs / sync | vmfs / uring | "
        "notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wl in WORKLOADS:
        v = by.get((wl.name, "vmfs"))
        if v is None:
            continue

        def ops(t: str, name: str = wl.name) -> str:
            r = by.get((name, t))
            return f"{r.ops_per_s:,.0f}" if r else "-"

        sync, uring = by.get((wl.name, "sync")), by.get((wl.name, "uring"))
        notes = "; ".join(
            n
            for t in TARGETS
            if (r := by.get((wl.name, t)))
            for n in (f"{t}: {x}" for x in r.notes)
        )
        lines.append(
            f"| {wl.title} | {v.ops_per_s:,.0f} | {v.mib_per_s:,.1f} | "
            f"{v.p50_us:.1f} / {v.p99_us:.1f} / {v.p999_us:.1f} | {v.driver_cpu_us_per_op} | "
            f"{ops('bounce')} | {ops('no-uring')} | {ops('sync')} | {ops('uring')} | "
            f"{ratio(v.ops_per_s, sync.ops_per_s) if sync else '-'} | "
            f"{ratio(v.ops_per_s, uring.ops_per_s) if uring else '-'} | {notes} |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def workload_root(wl: Workload, root: Path, opts: Any) -> Iterator[tuple[Path, Any] | None]:
    """Where `wl` runs and with which options: the common root, or the cold-cache workload's own
    ext4 root (None when it cannot run here, said in one line)."""
    if wl.kind != COLD:
        yield root, opts
        return
    why = cold_unavailable()
    if why:
        print(f"bench: {wl.name} skipped: {why}", file=sys.stderr)
        yield None
        return
    cold_opts = argparse.Namespace(**{**vars(opts), "file_size": opts.cold_mib << 20})
    with cold_root(Path(opts.cold_dir), cold_opts.file_size) as cold:
        yield cold, cold_opts


def chosen(wl: Workload, parts: list[str]) -> bool:
    """Every default workload when no part is given, else those whose name contains a part;
    an opt-in workload (long, or needing root) only when a part begins its name."""
    if not parts:
        return not wl.opt_in
    if wl.opt_in:
        return any(wl.name.startswith(p) for p in parts)
    return any(p in wl.name for p in parts)


def check_options(opts: Any) -> None:
    """Refuse a bad `vmfs bench` command line before anything is created or started."""
    if opts.seconds <= 0:
        raise UsageError(f"bench: --seconds must be more than 0, not {opts.seconds:g}")
    if opts.ops < 0:
        raise UsageError(f"bench: --ops must be 0 (use --seconds) or more, not {opts.ops}")
    if opts.file_mib <= 0:
        raise UsageError(f"bench: --file-mib must be more than 0, not {opts.file_mib}")
    if opts.cold_mib < 4:
        raise UsageError(f"bench: --cold-mib must be 4 or more, not {opts.cold_mib}")
    opts.file_size = opts.file_mib << 20
    opts.targets = [t.strip() for t in opts.targets.split(",") if t.strip()]
    unknown = [t for t in opts.targets if t not in TARGETS]
    if unknown or not opts.targets:
        raise UsageError(
            f"bench: unknown target {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(TARGETS)}"
        )
    names = [w.name for w in WORKLOADS] + [COLDSTART]
    named_coldstart = COLDSTART in opts.workloads
    if not named_coldstart and not any(chosen(w, opts.workloads) for w in WORKLOADS):
        raise UsageError(
            f"bench: no workload name contains {' or '.join(opts.workloads)}; "
            f"the workloads are {', '.join(names)}"
        )
    if opts.pin is not None:
        allowed = sorted(os.sched_getaffinity(0))
        if opts.pin not in allowed:
            raise UsageError(
                f"bench: --pin {opts.pin} is not a CPU this process may run on "
                f"(allowed: {', '.join(map(str, allowed))})"
            )
    if not os.path.isdir(opts.cold_dir):
        raise UsageError(f"bench: --cold-dir {opts.cold_dir} is not a directory")
    if opts.root is not None and not os.path.isdir(opts.root):
        raise UsageError(
            f"bench: --root {opts.root} is not a directory (give an existing one, or none "
            "for a temporary tmpfs directory)"
        )


def main(opts: Any) -> int:
    selected = [w for w in WORKLOADS if chosen(w, opts.workloads)]
    targets = [t for t in TARGETS if t in opts.targets]
    coldstart = COLDSTART in opts.workloads  # only when named
    pin(opts.pin)
    owned = opts.root is None
    root = Path(opts.root or tempfile.mkdtemp(prefix="vmfs-bench-root-", dir=DEFAULT_ROOT_PARENT))
    made_data_file = not (root / DATA_FILE).exists()
    if any(w.kind != COLD for w in selected):
        ensure_data_file(root, opts.file_size)
    if any(w.kind == "list" for w in selected):
        ensure_list_dir(root)
    progress = Progress(
        sys.stderr, len(selected) * len(targets), sys.stderr.isatty() or opts.progress
    )
    results: list[Result] = []
    try:
        for wl in selected:
            with workload_root(wl, root, opts) as place:
                if place is None:
                    progress.count += len(targets)
                    continue
                for target in targets:
                    results.append(run_one(wl, target, *place, progress))
                    if not opts.json and not progress.enabled:
                        r = results[-1]
                        print(f"{wl.name} {target}: {r.ops_per_s:,.0f} ops/s", file=sys.stderr)
        cold = run_coldstart(root, opts) if coldstart else None
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
        elif made_data_file:
            (root / DATA_FILE).unlink(missing_ok=True)
    if opts.json:
        reports: list[Any] = [*results, *([cold] if cold else [])]
        print(json.dumps([asdict(r) for r in reports], indent=1))
    else:
        tables = ([table(results)] if results else []) + ([coldstart_table(cold)] if cold else [])
        print("\n\n".join(tables))
        bound = [f"{r.workload} ({r.target})" for r in results if r.client_bound]
        if bound:
            print(
                f"\nclient-bound runs (figures limited by the load generator): {', '.join(bound)}"
            )
    return 0
