"""Shared tools of the hostile-client tests: raw messages, exact completion accounting, process
measurements, and a canary tree that must never be touched.

Expected values here come from the protocol text (docs/protocol.md), never from vmfs itself.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from vmfs.client import Client, Completion, LoopbackServer
from vmfs.wire import Command, build_params

U64 = (1 << 64) - 1
CAPACITY = 511
NUM_STATUSES = 19
NUM_COMMANDS = 20
HANDLE_CEILING = 1 << 31

# -- hypothesis run size ----------------------------------------------------------------------
# VMFS_HYPOTHESIS_PROFILE=ci (default) keeps the hostile suite short; =long is for runs by hand.

settings.register_profile(
    "hostile-ci",
    max_examples=40,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "hostile-long",
    max_examples=400,
    stateful_step_count=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def hypothesis_profile() -> settings:
    name = os.environ.get("VMFS_HYPOTHESIS_PROFILE", "ci")
    if name not in ("ci", "long"):
        raise ValueError(f"VMFS_HYPOTHESIS_PROFILE must be ci or long, not {name!r}")
    return settings.get_profile(f"hostile-{name}")


# -- raw commands -----------------------------------------------------------------------------


def message(cmd_id: int, cmd_type: int, params: bytes = b"") -> bytes:
    """A 64-byte command slot: id, type, 48 parameter bytes (padded with zeros)."""
    return struct.pack("<QQ", cmd_id & U64, cmd_type & U64) + params[:48].ljust(48, b"\0")


def params(cmd: Command, **fields: object) -> bytes:
    return build_params(cmd, **fields)


def push_raw(client: Client, raw: bytes, timeout: float = 10.0) -> None:
    """Queue one arbitrary 64-byte message, waiting (and draining completions) while full."""
    deadline = time.monotonic() + timeout
    while not client.cmdq.push(raw):
        client.collect()
        client.signal()
        if time.monotonic() > deadline:
            raise AssertionError("command queue stayed full")
        client.transport.wait(0.01)
    client.sent += 1


def send_many(client: Client, messages: Iterable[bytes]) -> list[int]:
    """Queue every message (keeping the queue full), signal, return the ids in order."""
    ids = []
    for raw in messages:
        push_raw(client, raw)
        ids.append(struct.unpack_from("<Q", raw, 0)[0])
    client.signal()
    return ids


def wait_all(client: Client, ids: Iterable[int], timeout: float = 20.0) -> dict[int, Completion]:
    """The one completion of each id (ids must be distinct)."""
    ids = list(ids)
    assert len(set(ids)) == len(ids), "test bug: ids must be distinct"
    deadline = time.monotonic() + timeout
    done: dict[int, Completion] = {}
    for cmd_id in ids:
        remaining = max(0.01, deadline - time.monotonic())
        done[cmd_id] = client.wait(cmd_id, remaining)
    return done


def fence(client: Client, fence_id: int = 0xFE_0000_0000) -> Completion:
    """An INITIALISE queued after everything else; once answered, earlier commands are too."""
    raw = message(fence_id, Command.INITIALISE)
    push_raw(client, raw)
    client.signal()
    return client.wait(fence_id)


def assert_no_extra_completions(client: Client) -> None:
    """After a fence, no completion may be waiting unclaimed (a duplicate or a stray id)."""
    fence(client)
    extra = client.pending_completions()
    assert extra == {}, f"completions nobody asked for: {extra}"


def check_completion_shape(done: Completion, cmd_type: int) -> None:
    """Rules every completion obeys.

    docs/protocol.md "Completion message", "Statuses", and "Rules every command follows" (data
    is 0 unless the status is SUCCESS).
    """
    assert 0 <= done.status < NUM_STATUSES, done
    if done.status != 0:
        assert done.data == 0, f"data must be 0 on failure: {done}"
    if cmd_type >= NUM_COMMANDS:
        assert done.status == 13, f"type {cmd_type} must be INVALID_COMMAND: {done}"


class HeldRing:
    """An io_uring stand-in for engine-level tests: calls stay in flight until released, then
    run through `perform` (or report 0 without one)."""

    pending = 0

    def __init__(self, perform: Callable[[tuple[Any, ...]], int] | None = None) -> None:
        self.perform = perform
        self.in_flight: dict[int, tuple[Any, ...]] = {}
        self.done: list[tuple[int, int]] = []

    def submit_call(self, call: tuple[Any, ...], tag: int) -> Any:
        assert tag not in self.in_flight, "two requests share one tag"
        self.in_flight[tag] = call
        return call

    def submit(self) -> int:
        return 0

    def wait(self, count: int = 1) -> None:
        self.release()

    def reap(self) -> list[tuple[int, int]]:
        done, self.done = self.done, []
        return done

    def release(self) -> None:
        for tag, call in self.in_flight.items():
            self.done.append((tag, self.perform(call) if self.perform else 0))
        self.in_flight.clear()


# -- the process ------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive(server: LoopbackServer) -> bool:
    return server.process is not None and server.process.poll() is None


def stop_and_wait(server: LoopbackServer, sig: int = signal.SIGTERM) -> tuple[int, float]:
    """Signal the driver; (exit code, seconds until it exited)."""
    assert server.process is not None
    start = time.monotonic()
    server.process.send_signal(sig)
    code = server.process.wait(10)
    elapsed = time.monotonic() - start
    server.process = None
    return code, elapsed


# -- the canary -------------------------------------------------------------------------------

CANARY_TOKEN = b"CANARY-7f3a9c-must-never-leave-the-outside"


class Canary:
    """A tree next to the served root. Nothing the client does may read, list or change it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.file.write_bytes(CANARY_TOKEN + b" file\n")
        self.directory.mkdir()
        (self.directory / "canary_inner.txt").write_bytes(CANARY_TOKEN + b" inner\n")
        self.empty_directory.mkdir()
        self.baseline = self.snapshot()

    @property
    def file(self) -> Path:
        return self.base / "canary_secret.txt"

    @property
    def directory(self) -> Path:
        return self.base / "canary_dir"

    @property
    def empty_directory(self) -> Path:
        return self.base / "canary_dir" / "canary_empty"

    def names(self) -> set[bytes]:
        """Every name in the canary tree (none may show up in a listing served to the client)."""
        found = {os.fsencode(self.base.name)}
        for _, dirs, files in os.walk(self.base):
            found.update(os.fsencode(n) for n in dirs + files)
        return found

    def inodes(self) -> set[tuple[int, int]]:
        found = set()
        for top, dirs, files in os.walk(self.base):
            for name in [*dirs, *files, "."]:
                st = os.lstat(os.path.join(top, name))
                found.add((st.st_dev, st.st_ino))
        return found

    def snapshot(self) -> dict[str, tuple[int, int, int, str]]:
        """(mode, size, mtime_ns, content digest) of every entry, and of the base itself."""
        result: dict[str, tuple[int, int, int, str]] = {}
        for top, dirs, files in os.walk(self.base):
            for name in [".", *dirs, *files]:
                path = os.path.join(top, name)
                st = os.lstat(path)
                digest = ""
                if os.path.isfile(path) and not os.path.islink(path):
                    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                key = os.path.relpath(path, self.base)
                result[key] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
        return result

    def assert_intact(self) -> None:
        assert self.snapshot() == self.baseline, "the canary tree outside the root changed"


def assert_share_clean(client: Client) -> None:
    """No byte of canary content ever reached the data share."""
    assert bytes(client.share).find(CANARY_TOKEN) < 0, "canary content leaked into the share"
