"""What `vmfs serve` checks before and while it serves: a bad root or device ends the process
with the reason, a second driver on one loopback directory is refused while the first keeps
serving, a device that vanishes later is an ERROR status, refusals are logged (rate-limited)."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from vmfs.client import LoopbackServer, vmfs_command
from vmfs.client.transport import create_loopback_dir
from vmfs.driver.refusals import RefusalLog
from vmfs.driver.request import Request
from vmfs.wire import Command, Status


def serve(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*vmfs_command(), "serve", *argv], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "served",
    [["--root", "/nonexistent"], ["--block-device", "/nonexistent.img"]],
    ids=["root", "device"],
)
def test_serve_fails_fast_on_what_it_cannot_serve(tmp_path: Path, served: list[str]) -> None:
    loopback = create_loopback_dir(tmp_path / "lb", data_size=1 << 20)
    run = serve("--loopback", str(loopback), *served)
    assert run.returncode == 1
    assert run.stderr.startswith("vmfs: error: ") and "/nonexistent" in run.stderr
    assert "serving" not in run.stderr


def test_a_second_driver_is_refused_and_the_first_keeps_serving(tmp_path: Path) -> None:
    with LoopbackServer(directory=tmp_path / "lb") as srv:
        assert srv.client.initialise().ok
        second = serve("--loopback", str(srv.directory), "--root", str(srv.root))
        assert second.returncode == 1, second.stderr
        assert "already served by another" in second.stderr
        assert len(second.stderr.splitlines()) == 1
        assert srv.client.mkdir("/still-served").ok
        assert srv.client.stat("/still-served")[0].ok
        assert srv.process is not None and srv.process.poll() is None


def test_two_drivers_with_one_state_directory_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with LoopbackServer(directory=tmp_path / "lb1", extra_args=["--state-dir", str(state)]) as srv:
        assert srv.client.initialise().ok
        other = create_loopback_dir(tmp_path / "lb2", data_size=1 << 20)
        args = ["--loopback", str(other), "--root", str(srv.root), "--state-dir", str(state)]
        second = serve(*args)
        assert second.returncode == 1 and "restart journal" in second.stderr, second.stderr
        assert srv.client.stat("/")[0].ok


def test_a_device_that_disappears_later_is_an_initialise_error(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    args = ["--block-device", str(image), "--mount-point", str(tmp_path / "mnt")]
    with LoopbackServer(directory=tmp_path / "lb", extra_args=args) as srv:
        deadline = time.monotonic() + 10
        while "serving" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        image.unlink()
        assert srv.client.initialise().status == Status.ERROR
        assert srv.process is not None and srv.process.poll() is None
        assert "INITIALISE failed" in srv.log()


def test_refusals_are_logged_and_a_flood_is_counted(tmp_path: Path) -> None:
    with LoopbackServer(directory=tmp_path / "lb") as srv:
        c = srv.client
        assert c.initialise().ok
        for i in range(40):
            assert c.stat(f"/absent-{i}")[0].status == Status.NO_FILE
        assert c.close(12345).status == Status.INVALID_FD
        srv.stop()
        log = srv.log()
    refused = [line for line in log.splitlines() if "refused: command" in line]
    assert 1 <= len(refused) <= 20, log
    assert "STAT -> NO_FILE" in refused[0]
    assert "more commands" in log and "not logged" in log


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused(cmd: int, status: Status) -> Request:
    req = Request()
    req.cmd, req.status, req.params = cmd, int(status), (7, 8)
    return req


def test_refusal_log_limits_each_second(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    refusals = RefusalLog(per_second=3, clock=clock)
    with caplog.at_level(logging.WARNING, logger="vmfs.refused"):
        for _ in range(10):
            refusals(refused(Command.FILE_CLOSE, Status.INVALID_FD))
        refusals(refused(Command.DIR_READ, Status.END_OF_DIRECTORY))
        clock.now += 1.5
        refusals(refused(99, Status.INVALID_COMMAND))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == ["refused: command 0 (id 0) FILE_CLOSE -> INVALID_FD"] * 3
    assert messages[3].startswith("refused: 7 more commands")
    assert messages[4] == "refused: command 0 (id 0) unknown type 99 -> INVALID_COMMAND"
    assert len(messages) == 5


def test_refusal_log_details_parameters_when_verbose(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(detail=True)
    with caplog.at_level(logging.WARNING, logger="vmfs.refused"):
        refusals(refused(Command.FILE_READ, Status.INVALID_BUFFER))
    assert caplog.records[0].getMessage().endswith("INVALID_BUFFER, parameters (7, 8)")


def test_log_lines_carry_a_timestamp_and_counter_lines_a_prefix(tmp_path: Path) -> None:
    with LoopbackServer(directory=tmp_path / "lb") as srv:
        assert srv.client.initialise().ok
        srv.stop()
        lines = srv.log().splitlines()
    assert lines and all(line[:4].isdigit() and line[10] == "T" for line in lines), lines
    counters = [line for line in lines if "counters:" in line]
    assert any("INITIALISE: SUCCESS=1" in line for line in counters), lines
