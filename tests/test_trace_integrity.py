"""Replay never says OK for a trace it could not fully check, and a bad trace or command line is
one `vmfs: error:` line, never a traceback; a session with large writes replays as it ran."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vmfs.client import LoopbackServer
from vmfs.tracefile import read_trace
from vmfs.wire import Command, OpenFlags

TRACES = Path(__file__).resolve().parent / "traces"
V2 = TRACES / "micropython.trace"
V1 = TRACES / "v1" / "micropython.trace"
SERVE = shlex.join([sys.executable, "-m", "vmfs", "serve"]) + " --loopback {dir} --root {root}"


def vmfs(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(run: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single `vmfs: error:` line a refused invocation printed."""
    assert run.returncode == code, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmfs: error: "), run.stderr
    assert " OK " not in run.stdout
    return lines[0]


def edited(old: bytes, new: bytes) -> Callable[[Path], Path]:
    """The corpus trace with the first `old` replaced by `new`."""

    def make(tmp: Path) -> Path:
        data = V2.read_bytes()
        assert old in data
        (tmp / "t.trace").write_bytes(data.replace(old, new, 1))
        return tmp / "t.trace"

    return make


def written(data: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        tmp.mkdir(exist_ok=True)
        (tmp / "t.trace").write_bytes(data)
        return tmp / "t.trace"

    return make


def cut(source: Path, how: Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    return written(how(source.read_bytes()))


def without_last_line(data: bytes) -> bytes:
    return data[: data.rstrip(b"\n").rfind(b"\n") + 1]


HEADER_V2 = (TRACES / "pipelined.trace").read_bytes().split(b"\n", 1)[0] + b"\n"
BAD_TRACES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "random bytes": (written(bytes(range(256)) * 7 + os.urandom(300)), "not a vmfs trace"),
    "empty": (written(b""), "no session header"),
    "missing": (lambda tmp: tmp / "missing.trace", "cannot read trace"),
    "directory": (lambda tmp: tmp, "is a directory"),
    "short w": (edited(b'"w":[0,0,0,0,0,0]', b'"w":[0,0,0]'), "six parameter words"),
    "w over u64": (edited(b'"w":[0,', b'"w":[18446744073709551616,'), "not a u64"),
    "w text": (edited(b'"w":[0,', b'"w":["x",'), "not a u64"),
    "negative id": (edited(b'"id":0,', b'"id":-1,'), "not a u64"),
    "bad descriptor": (edited(b'"in":[[0,', b'"in":[["x",'), "malformed buffer"),
    "version 3": (edited(b'"vmfs_trace":2', b'"vmfs_trace":3'), "trace version 3"),
    "huge share": (edited(b'"share_size":67108864', b'"share_size":18446744073709551615'), "share"),
    "v2 header only": (written(HEADER_V2), "no end record"),
    "v2 no commands": (
        written(HEADER_V2 + b'{"t":"e","commands":0,"completions":0}\n'),
        "no commands",
    ),
    "v1 header only": (cut(V1, lambda d: d.split(b"\n", 1)[0] + b"\n"), "no commands"),
    "v2 cut by one byte": (cut(V2, lambda d: d[:-1]), "truncated"),
    "v2 cut by one line": (cut(V2, without_last_line), "truncated"),
    "v2 cut in a buffer": (cut(TRACES / "posix.trace", lambda d: d[:4000]), "truncated"),
    "v1 cut by one byte": (cut(V1, lambda d: d[:-1]), "truncated"),
    "record after the end": (
        cut(V2, lambda d: d + b'{"t":"r","i":0,"id":0,"s":0,"d":0}\n'),
        "after its",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TRACES), ids=list(BAD_TRACES))
def test_a_bad_trace_is_one_error_line(case: str, tmp_path: Path) -> None:
    make, reason = BAD_TRACES[case]
    line = one_error_line(vmfs("replay", make(tmp_path)))
    assert reason in line


def test_v1_cut_by_one_line_is_incomplete_not_ok(tmp_path: Path) -> None:
    trace = cut(V1, without_last_line)(tmp_path)
    run = vmfs("replay", trace)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("vmfs replay: INCOMPLETE t.trace")
    assert "1 commands not checked: the trace holds no completion for them" in summary


def test_a_damaged_compressed_buffer_is_one_error_line(tmp_path: Path) -> None:
    data = bytearray((TRACES / "posix.trace").read_bytes())
    at = data.index(b'"z",')
    payload = data.index(b"\n", at) + 1 + 40
    data[payload : payload + 8] = b"\xff" * 8
    trace = written(bytes(data))(tmp_path)
    assert "damaged" in one_error_line(vmfs("replay", trace))


@pytest.mark.parametrize(
    ("root", "reason"), [("nowhere", "not an existing directory"), ("a-file", "not an existing")]
)
def test_a_bad_root_is_one_error_line(root: str, reason: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    assert reason in one_error_line(vmfs("replay", V2, "--root", tmp_path / root))


@pytest.mark.parametrize(
    ("driver", "code", "reason"),
    [
        ("cvmfs --loopback /tmp/x", 2, "{dir}"),
        ("cvmfs --loopback {dir} --root {oops}", 2, "'oops'"),
        ("'unclosed {dir}", 2, "--driver"),
        ("/no/such/driver {dir} {root}", 1, "cannot run the driver /no/such/driver"),
    ],
)
def test_a_bad_driver_command_is_one_error_line(driver: str, code: int, reason: str) -> None:
    assert reason in one_error_line(vmfs("replay", V2, "--driver", driver), code)


# -- another driver ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["errors", "pipelined"])
def test_replay_against_an_external_driver_command(name: str) -> None:
    run = vmfs("replay", TRACES / f"{name}.trace", "--driver", SERVE)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"vmfs replay: OK {name}.trace" in run.stdout


def test_an_external_driver_that_exits_fails_the_replay() -> None:
    run = vmfs("replay", V2, "--driver", "sh -c 'exit 3' {dir} {root}")
    assert run.returncode == 1
    assert "the driver exited" in run.stdout and "FAILED" in run.stdout
    total = sum(len(s.commands) for s in read_trace(V2))
    assert f"{total - 1} commands not sent: the driver had exited" in run.stdout
    assert "Traceback" not in run.stderr


# -- acceptance: big single-command writes and every command -------------------------------------

SIZES = {"100k.bin": 100 << 10, "1m.bin": 1 << 20, "16m.bin": 16 << 20}


def big_session(tmp_path: Path) -> Path:
    """Every command type, with 100 KiB, 1 MiB and 16 MiB writes read back whole."""
    trace = tmp_path / "big.trace"
    root = tmp_path / "recorded-root"
    with LoopbackServer(root=root, extra_args=["--record", str(trace)]) as server:
        c = server.client
        assert c.initialise().ok
        assert c.mkdir("data").ok
        for name, size in SIZES.items():
            payload = os.urandom(size // 2) + bytes(size - size // 2)
            h = c.open(f"data/{name}", OpenFlags.READ_WRITE | OpenFlags.CREATE).data
            assert c.write(h, 0, payload).data == size
            assert c.sync(h).ok and c.size(h).data == size
            done, back = c.read(h, 0, size)
            assert done.data == size and back == payload
            assert c.close(h).ok
        assert c.stat("data/1m.bin")[1]["size"] == 1 << 20  # type: ignore[index]
        h = c.open("data/100k.bin", OpenFlags.READ_WRITE).data
        assert c.truncate(h, 1000).ok and c.close(h).ok
        d = c.opendir("data").data
        assert c.readdir(d)[0].ok
        location = c.telldir(d).data
        assert c.seekdir(d, location).ok and c.rewinddir(d).ok
        assert len([c.readdir(d) for _ in range(4)]) == 4 and c.closedir(d).ok
        assert c.rename("data/1m.bin", "data/moved.bin").ok
        assert c.remove("data/moved.bin").ok
        assert c.mkdir("empty").ok and c.rmdir("empty").ok
        assert c.deinitialise().ok and c.initialise().ok
    kinds = {r["c"] for s in read_trace(trace) for r in s.commands}
    assert kinds == set(Command)
    return trace


def test_big_writes_replay_on_an_empty_root_and_not_over_a_directory(tmp_path: Path) -> None:
    trace = big_session(tmp_path)
    size = trace.stat().st_size
    assert size < 1.2 * sum(SIZES.values()), size  # the zero halves compress
    run = vmfs("replay", trace)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "vmfs replay: OK big.trace" in run.stdout and " 0 mismatched" in run.stdout
    clash = tmp_path / "clash"
    (clash / "data" / "16m.bin").mkdir(parents=True)
    run = vmfs("replay", trace, "--root", clash)
    assert run.returncode == 1
    assert "Traceback" not in run.stdout + run.stderr
    assert "MISMATCH" in run.stdout and "vmfs replay: FAILED big.trace" in run.stdout
    assert "FILE_OPEN path.offset=" in run.stdout and "in@0=b'data/16m.bin'" in run.stdout
    for how in (lambda d: d[:-1], without_last_line):
        assert "truncated" in one_error_line(vmfs("replay", cut(trace, how)(tmp_path / "cut")))
