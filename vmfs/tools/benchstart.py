"""`vmfs bench --workloads coldstart`: how soon a freshly spawned driver answers, and how much
memory it holds once it has served.

A LionsOS client waits for the driver at boot, so cold start is measured as that client sees
it: INITIALISE and a STAT are queued (and signalled) before `vmfs serve` is spawned, and the
time runs from the spawn to the STAT's completion. In the same run, alternating with it, a bare
`python -c pass` from spawn to exit: the floor any Python driver pays on this machine. Peak
memory is the driver's VmHWM after a load of STATs and open/write/close sequences.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vmfs
from vmfs.client import Client
from vmfs.client.transport import LoopbackClientTransport, create_loopback_dir
from vmfs.wire import FAST_PARAMS, PARAMS_SIZE, U64_MASK, Command, OpenFlags, Status

COLDSTART = "coldstart"
RUNS = 5
STATS = 20_000
WRITES = 2_000
STAT_QD = 64
FIRST_ANSWER_TIMEOUT = 30.0
STAT_TARGET = "bench.coldstart"
WRITE_SIZE = 4096
LOOP_DATA_SIZE = 1 << 20
PATH_AT, STAT_OUT_AT = 0, 4096  # the share: the STAT's path, its output record
DRIVER_SOURCE = Path(vmfs.__file__).parent / "driver.py"
BARE_HWM = "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"


@dataclass
class ColdStart:
    """One coldstart run: medians of `runs` spawns each, and the driver's memory after load."""

    workload: str = COLDSTART
    target: str = "vmfs"
    runs: int = 0
    vmfs_ms: float = 0.0  # spawn to the queued STAT's completion, median
    bare_ms: float = 0.0  # spawn to exit of `python -c pass`, median
    ratio: float = 0.0  # vmfs_ms / bare_ms
    vmfs_cpu_ms: float = 0.0  # the same starts in CPU time: steadier on a busy machine
    bare_cpu_ms: float = 0.0
    cpu_ratio: float = 0.0
    vmfs_runs_ms: list[float] = field(default_factory=list)
    bare_runs_ms: list[float] = field(default_factory=list)
    vmfs_runs_cpu_ms: list[float] = field(default_factory=list)
    bare_runs_cpu_ms: list[float] = field(default_factory=list)
    peak_rss_mib: float = 0.0  # the driver's VmHWM after the load
    bare_rss_mib: float = 0.0  # VmHWM of a bare Python start
    stats: int = 0
    writes: int = 0  # open/write/close sequences
    errors: int = 0
    notes: list[str] = field(default_factory=list)


def spawn_bare() -> tuple[float, float]:
    """Milliseconds from spawn to exit of `python -c pass`, and the CPU time it used."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"`{sys.executable} -c pass` exited {proc.returncode}")
    return elapsed * 1e3, (usage.ru_utime + usage.ru_stime) * 1e3


def bare_rss_mib() -> float:
    """Peak RSS of a bare Python start, MiB: its own VmHWM (a child's ru_maxrss would count
    the parent's pages it was forked with)."""
    out = subprocess.run([sys.executable, "-c", BARE_HWM], check=True, capture_output=True)
    return int(out.stdout) / 1024


def cpu_ms(pid: int) -> float:
    """CPU time a running process has used: /proc/PID/schedstat (ns), else the clock ticks of
    /proc/PID/stat."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) * 1e3 / os.sysconf("SC_CLK_TCK")


class ColdDriver:
    """A loopback directory with INITIALISE and a STAT queued, then `vmfs serve` spawned on it."""

    def __init__(self, base: Path, root: Path) -> None:
        self.directory = create_loopback_dir(base / "loop", data_size=LOOP_DATA_SIZE)
        self.root = root
        self.log_path = base / "driver.log"
        self.client = Client(LoopbackClientTransport(self.directory))
        self.process: subprocess.Popen[bytes] | None = None

    def queue_first_commands(self) -> tuple[int, int]:
        """Queue INITIALISE and a STAT of STAT_TARGET and ring; returns their ids."""
        share = self.client.share
        name = STAT_TARGET.encode()
        share[PATH_AT : PATH_AT + len(name)] = name
        init_id = self.client.send(Command.INITIALISE)
        params = FAST_PARAMS[Command.STAT].pack(PATH_AT, len(name), STAT_OUT_AT, 4096)
        stat_id = self.client.send(Command.STAT, params.ljust(PARAMS_SIZE, b"\0"))
        self.client.signal()
        return init_id, stat_id

    def spawn_and_wait(self, python_options: Sequence[str] = ()) -> tuple[float, float]:
        """Queue the first commands, spawn the driver (`python_options` before `-m vmfs`);
        milliseconds from the spawn until the STAT's completion is published, and the CPU time
        the driver had used by then (both completions are then checked)."""
        init_id, stat_id = self.queue_first_commands()
        args = [sys.executable, *python_options, "-m", "vmfs", "serve"]
        args += ["--loopback", str(self.directory)]
        args += ["--root", str(self.root)]
        notify = self.client.transport.notify_fd()  # type: ignore[attr-defined]
        cmplq = self.client.cmplq
        with open(self.log_path, "ab") as log:
            start = time.perf_counter()
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = start + FIRST_ANSWER_TIMEOUT
        while (cmplq.tail - cmplq.head) & U64_MASK < 2:
            select.select([notify], [], [], 0.05)
            if self.process.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"driver gave no first answer:\n{self.log()[-2000:]}")
        elapsed = time.perf_counter() - start
        cpu = cpu_ms(self.process.pid)
        for cmd_id, what in ((init_id, "INITIALISE"), (stat_id, "STAT")):
            done = self.client.wait(cmd_id, FIRST_ANSWER_TIMEOUT)
            if done.status != Status.SUCCESS:
                raise RuntimeError(f"the first {what} failed: {done}\n{self.log()[-2000:]}")
        return elapsed * 1e3, cpu

    def peak_rss_mib(self) -> float:
        """VmHWM of the running driver (/proc/PID/status), MiB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close_transport()


def stat_load(client: Client, count: int) -> int:
    """`count` STATs of STAT_TARGET, STAT_QD in flight; returns how many failed."""
    params = FAST_PARAMS[Command.STAT].pack(PATH_AT, len(STAT_TARGET), STAT_OUT_AT, 4096)
    params = params.ljust(PARAMS_SIZE, b"\0")
    errors = 0
    while count > 0:
        ids = [client.send(Command.STAT, params) for _ in range(min(STAT_QD, count))]
        client.signal()
        errors += sum(client.wait(i).status != Status.SUCCESS for i in ids)
        count -= len(ids)
    return errors


def write_load(client: Client, count: int) -> int:
    """`count` sequences of open (creating), a 4 KiB write, close; returns how many failed."""
    errors = 0
    data = b"\xa5" * WRITE_SIZE
    for i in range(count):
        opened = client.open(f"{STAT_TARGET}.{i % 16}", OpenFlags.READ_WRITE | OpenFlags.CREATE)
        if not opened.ok:
            errors += 1
            continue
        written = client.write(opened.data, 0, data)
        closed = client.close(opened.data)
        errors += not (written.ok and written.data == WRITE_SIZE and closed.ok)
    return errors


def run_coldstart(root: Path, opts: Any, runs: int = RUNS) -> ColdStart:
    """`runs` cold starts alternating with bare Python starts (after one unmeasured start of
    each, so neither pays for a cold page cache), then the load and the driver's peak RSS on
    the last driver started. `opts.ops`, when set, is the STAT count (open/write/close: a
    tenth of it)."""
    stats = opts.ops or STATS
    writes = max(1, stats // 10) if opts.ops else WRITES
    result = ColdStart(runs=runs, stats=stats, writes=writes)
    (root / STAT_TARGET).write_bytes(b"cold start\n")
    try:
        with tempfile.TemporaryDirectory(prefix="vmfs-bench-cold-", dir=_scratch_parent()) as tmp:
            for run in range(runs + 1):
                bare_ms, bare_cpu = spawn_bare()
                base = Path(tmp) / f"run{run}"
                base.mkdir()
                driver = ColdDriver(base, root)
                try:
                    elapsed, cpu = driver.spawn_and_wait()
                    if run == 0:
                        continue  # warm-up
                    result.bare_runs_ms.append(round(bare_ms, 2))
                    result.vmfs_runs_ms.append(round(elapsed, 2))
                    result.bare_runs_cpu_ms.append(round(bare_cpu, 2))
                    result.vmfs_runs_cpu_ms.append(round(cpu, 2))
                    if run == runs:
                        result.errors += stat_load(driver.client, stats)
                        result.errors += write_load(driver.client, writes)
                        result.peak_rss_mib = round(driver.peak_rss_mib(), 2)
                finally:
                    driver.close()
    finally:
        for path in root.glob(f"{STAT_TARGET}*"):
            path.unlink(missing_ok=True)
    result.bare_rss_mib = round(bare_rss_mib(), 2)
    result.vmfs_ms = round(statistics.median(result.vmfs_runs_ms), 2)
    result.bare_ms = round(statistics.median(result.bare_runs_ms), 2)
    result.ratio = round(result.vmfs_ms / result.bare_ms, 2)
    result.vmfs_cpu_ms = round(statistics.median(result.vmfs_runs_cpu_ms), 2)
    result.bare_cpu_ms = round(statistics.median(result.bare_runs_cpu_ms), 2)
    result.cpu_ratio = round(result.vmfs_cpu_ms / result.bare_cpu_ms, 2)
    if not os.path.exists(importlib.util.cache_from_source(str(DRIVER_SOURCE))):
        result.notes.append("vmfs's bytecode is not cached: every start compiles its sources")
    if result.errors:
        result.notes.append(f"{result.errors} errors")
    return result


def _scratch_parent() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


def table(result: ColdStart) -> str:
    """The human table of a coldstart run."""
    return "\n".join(
        [
            f"| cold start (median of {result.runs}) | vmfs serve: spawn to first answer | "
            "python -c pass: spawn to exit | ratio | CPU ms, vmfs / bare (ratio) | "
            "driver peak RSS after load | python -c pass RSS | notes |",
            "|---|---|---|---|---|---|---|---|",
            f"| INITIALISE + STAT queued | {result.vmfs_ms:.1f} ms | {result.bare_ms:.1f} ms | "
            f"{result.ratio:.2f} | {result.vmfs_cpu_ms:.1f} / {result.bare_cpu_ms:.1f} "
            f"({result.cpu_ratio:.2f}) | {result.peak_rss_mib:.1f} MiB ({result.stats:,} STATs, "
            f"{result.writes:,} open/write/close) | {result.bare_rss_mib:.1f} MiB | "
            f"{'; '.join(result.notes)} |",
        ]
    )
