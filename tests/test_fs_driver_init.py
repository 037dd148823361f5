"""fs_driver_init with a stand-in driver that records each start and then sleeps or exits."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmfs.resources import resource_path

SCRIPT = resource_path("fs_driver_init")
# Every shell a guest image may run the script with (scripts/bootstrap installs busybox).
SHELLS = [["dash"], ["bash", "--posix"], ["busybox", "sh"]]

STANDIN = """#!{python}
import json, os, signal, sys, time
from pathlib import Path

record = Path(os.environ["STANDIN_RECORD"])

def note(entry):
    with record.open("a") as f:
        f.write(json.dumps(entry) + "\\n")

def on_term(*_):
    note({{"term": os.getpid()}})
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
note({{"pid": os.getpid(), "argv": sys.argv[1:], "t": time.monotonic()}})
runs = sum('"pid"' in line for line in record.read_text().splitlines())
plan = os.environ.get("STANDIN_PLAN", "sleep").split()
action = plan[min(runs, len(plan)) - 1]
if action in ("sleep", "nap"):
    time.sleep(60 if action == "sleep" else 1)
    sys.exit(0)
sys.exit(int(action))
"""


class Run:
    """One fs_driver_init process and the stand-in's record."""

    def __init__(self, tmp_path: Path, shell: list[str], plan: str, *args: str, **env: str) -> None:
        self.record = tmp_path / "record.jsonl"
        self.record.touch()
        standin = tmp_path / "standin"
        standin.write_text(STANDIN.format(python=sys.executable))
        standin.chmod(0o755)
        environment = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "VMFS": str(standin),
            "STANDIN_RECORD": str(self.record),
            "STANDIN_PLAN": plan,
            "VMFS_BACKOFF": "0.05",
            **env,
        }
        self.proc = subprocess.Popen(
            [*shell, str(SCRIPT), *args], env=environment, stderr=subprocess.PIPE, text=True
        )

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def starts(self) -> list[dict]:
        return [e for e in self.entries() if "pid" in e]

    def wait_for_starts(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.starts()) < n:
            assert time.monotonic() < deadline, f"only {len(self.starts())} of {n} starts"
            assert self.proc.poll() is None, "fs_driver_init ended early"
            time.sleep(0.02)
        return self.starts()

    def finish(self, timeout: float = 10.0) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


Launch = Callable[..., Run]


@pytest.fixture(params=SHELLS, ids=lambda argv: argv[0])
def shell(request: pytest.FixtureRequest) -> list[str]:
    return request.param


@pytest.fixture
def launch(tmp_path: Path, shell: list[str]) -> Iterator[Launch]:
    """Start fs_driver_init with the stand-in; everything started is killed afterwards."""
    started: list[Run] = []

    def start(plan: str, *args: str, **env: str) -> Run:
        run = Run(tmp_path, shell, plan, *args, **env)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
        for entry in run.starts():
            try:
                os.kill(entry["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        run.proc.communicate()


def test_passes_block_device_and_mount_point(launch: Launch) -> None:
    run = launch("0", BLOCK_DEVICE="/dev/vdb", MOUNT_POINT="/srv/disk", VMFS_ARGS="-v -x")
    code, err = run.finish()
    assert code == 0, err
    [start] = run.starts()
    assert start["argv"] == [
        "serve",
        "--uio",
        "--block-device",
        "/dev/vdb",
        "--mount-point",
        "/srv/disk",
        "-v",
        "-x",
    ]
    stamped = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d fs_driver_init: ")
    assert all(stamped.match(line) for line in err.splitlines()), err


def test_defaults_are_the_lionsos_example_values(launch: Launch) -> None:
    run = launch("0")
    code, _ = run.finish()
    assert code == 0
    argv = run.starts()[0]["argv"]
    assert argv[argv.index("--block-device") + 1] == "/dev/vda"
    assert argv[argv.index("--mount-point") + 1] == "/mnt"


def test_restarts_after_kill_9_and_forwards_sigterm(launch: Launch) -> None:
    run = launch("sleep")
    first = run.wait_for_starts(1)[0]
    os.kill(first["pid"], signal.SIGKILL)
    second = run.wait_for_starts(2)[1]
    assert second["pid"] != first["pid"]
    assert second["argv"] == first["argv"]
    run.proc.send_signal(signal.SIGTERM)
    code, err = run.finish()
    assert {"term": second["pid"]} in run.entries()
    assert code == 0, err
    assert "killed by signal 9" in err
    assert len(run.starts()) == 2


def test_restarts_after_failure_then_exits_0(launch: Launch) -> None:
    run = launch("3 0")
    code, err = run.finish()
    assert code == 0, err
    assert len(run.starts()) == 2
    assert "exited with status 3" in err


def test_gives_up_after_the_cap(launch: Launch) -> None:
    run = launch("1", VMFS_MAX_RESTARTS="3", VMFS_BACKOFF="0.1")
    code, err = run.finish()
    assert code != 0
    assert len(run.starts()) == 4
    assert "giving up" in err
    times = [s["t"] for s in run.starts()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, expected in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= expected * 0.9, f"back-off {gap:.3f}s shorter than {expected}s"


def test_exits_0_when_driver_exits_0(launch: Launch) -> None:
    run = launch("0")
    code, err = run.finish()
    assert code == 0, err
    assert len(run.starts()) == 1


def test_missing_driver_command(launch: Launch, tmp_path: Path) -> None:
    run = launch("0", VMFS=str(tmp_path / "absent"))
    code, err = run.finish()
    assert code != 0
    assert "absent" in err and "not found" in err
    assert run.starts() == []


def test_start_argument_supervises_in_the_background(launch: Launch, tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    run = launch("1 nap", "start", VMFS_LOG=str(log))
    code, _ = run.finish(timeout=0.9)
    assert code == 0
    deadline = time.monotonic() + 5.0
    while "driver exited normally" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    assert len(run.starts()) == 2
    assert "exited with status 1" in log.read_text()
