"""Every user mistake on the command line ends in one line, `vmfs: error: ...`, never a
traceback: exit 2 for a bad command line, 1 for something wrong on the machine.

Each row runs the installed CLI in a fresh process from a directory outside the repository.
Words in braces name things the `places` fixture prepares (a file, a loopback directory, ...).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmfs.client.transport import create_loopback_dir

USAGE, RUNTIME = 2, 1


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    code: int
    says: str  # a part of the message a user needs to act on
    env: dict[str, str] = field(default_factory=dict)


def case(name: str, argv: str, code: int, says: str, **env: str) -> Case:
    return Case(name, tuple(argv.split()), code, says, env)


CASES = [
    # the top level
    case("no command", "", USAGE, "COMMAND"),
    case("unknown command", "frobnicate", USAGE, "invalid choice"),
    case("unknown top-level option", "--frobnicate serve", USAGE, "unrecognized arguments"),
    # serve: the command line
    case("serve without transport", "serve --root {dir}", USAGE, "--loopback DIR or --uio"),
    case("serve with two transports", "serve --uio --loopback {lb} --root {dir}", USAGE, "one of"),
    case("serve with nothing to serve", "serve --loopback {lb}", USAGE, "--root DIR"),
    case(
        "serve root and device",
        "serve --loopback {lb} --root {dir} --block-device {img}",
        USAGE,
        "exclude",
    ),
    case("serve handles 0", "serve --loopback {lb} --root {dir} --handles 0", USAGE, "--handles"),
    case("serve handles huge", "serve --loopback {lb} --root {dir} --handles 99999", USAGE, "1.."),
    case("serve handles not int", "serve --loopback {lb} --root {dir} --handles x", USAGE, "int"),
    case(
        "serve negative record cap",
        "serve --loopback {lb} --root {dir} --record-cap -1",
        USAGE,
        "--record-cap",
    ),
    case("serve negative spin", "serve --loopback {lb} --root {dir} --spin-us -5", USAGE, "--spin"),
    case("serve spin not int", "serve --loopback {lb} --root {dir} --spin-us 1.5", USAGE, "int"),
    case("serve negative uio wait", "serve --uio --root {dir} --uio-wait -1", USAGE, "--uio-wait"),
    case(
        "serve unknown option after -v",
        "serve -v --loopback {lb} --root {dir} --frobnicate",
        USAGE,
        "unrecognized",
    ),
    # serve: what the command line names
    case(
        "serve missing root", "serve --loopback {lb} --root /nonexistent", RUNTIME, "/nonexistent"
    ),
    case("serve root is a file", "serve --loopback {lb} --root {file}", RUNTIME, "not a directory"),
    case(
        "serve missing device",
        "serve --loopback {lb} --block-device {dir}/junk.img",
        RUNTIME,
        "junk.img",
    ),
    case(
        "serve device is a directory",
        "serve --loopback {lb} --block-device {dir}",
        RUNTIME,
        "neither a block device nor an image file",
    ),
    case(
        "serve mount point is a file",
        "serve --loopback {lb} --block-device {img} --mount-point {file}",
        RUNTIME,
        "--mount-point",
    ),
    case(
        "serve new loopback dir",
        "serve --loopback {dir}/new --root {dir}",
        RUNTIME,
        "vmfs loopback create",
    ),
    case(
        "serve empty loopback dir",
        "serve --loopback {dir} --root {dir}",
        RUNTIME,
        "vmfs loopback create",
    ),
    case(
        "serve short config",
        "serve --loopback {badlb} --root {dir}",
        RUNTIME,
        "vmfs_config",
    ),
    case(
        "serve state dir is a file",
        "serve --loopback {lb} --root {dir} --state-dir {file}",
        RUNTIME,
        "--state-dir",
    ),
    case(
        "serve record into missing dir",
        "serve --loopback {lb} --root {dir} --record /no/such/dir/t",
        RUNTIME,
        "/no/such/dir",
    ),
    case(
        "serve record to a directory",
        "serve --loopback {lb} --root {dir} --record {dir}",
        RUNTIME,
        "directory",
    ),
    case(
        "serve uio devices absent",
        "serve --uio --root {dir} --uio-wait 0 --uio-sysfs {dir} --uio-dev {dir}",
        RUNTIME,
        "UIO devices missing",
    ),
    # loopback
    case("loopback without action", "loopback", USAGE, "ACTION"),
    case("loopback create without dir", "loopback create", USAGE, "DIR"),
    case("loopback create on a file", "loopback create {file}", RUNTIME, "not a directory"),
    case("loopback create bad size", "loopback create {dir}/x --data-mib big", USAGE, "int"),
    case("loopback create no data", "loopback create {dir}/x --data-mib 0", USAGE, "--data-mib"),
    # replay (the trace's contents are checked by replay itself)
    case("replay without trace", "replay", USAGE, "FILE"),
    case("replay missing trace", "replay /nonexistent.trace", RUNTIME, "/nonexistent.trace"),
    case("replay a directory", "replay {dir}", RUNTIME, "not a trace file"),
    case("replay missing root", "replay {file} --root /nonexistent", RUNTIME, "/nonexistent"),
    case("replay zero timeout", "replay {file} --timeout 0", USAGE, "--timeout"),
    # bench
    case("bench negative seconds", "bench --seconds -1", USAGE, "--seconds"),
    case("bench zero seconds", "bench --seconds 0", USAGE, "--seconds"),
    case("bench negative ops", "bench --ops -5", USAGE, "--ops"),
    case("bench pin 999", "bench --pin 999", USAGE, "--pin 999"),
    case("bench missing root", "bench --root {dir}/absent", USAGE, "absent"),
    case("bench unknown target", "bench --targets vmfs,warp", USAGE, "warp"),
    case("bench no workload", "bench --workloads nothing-like-it", USAGE, "seqread-4k-qd1"),
    case("bench zero file", "bench --file-mib 0", USAGE, "--file-mib"),
    # diagram
    case("diagram outside repository", "diagram", RUNTIME, "--out"),
    case("diagram check outside repository", "diagram --check", RUNTIME, "--out"),
    case("diagram without dot", "diagram --out {dir}/d", RUNTIME, "graphviz", PATH="/nonexistent"),
    case("diagram unknown option", "diagram --frobnicate", USAGE, "unrecognized"),
    # demo
    case("demo extra argument", "demo now", USAGE, "unrecognized"),
    case("demo quiet with value", "demo --quiet=yes", USAGE, "--quiet"),
    # guest (argument checks only: nothing is built or booted)
    case("guest without action", "guest", USAGE, "ACTION"),
    case("guest unknown action", "guest frobnicate", USAGE, "invalid choice"),
    case("guest run without script", "guest run", USAGE, "script"),
    case("guest demo bad driver", "guest demo --driver imaginary", USAGE, "imaginary"),
    case("guest cache is a file", "guest --cache {file} build", RUNTIME, "not a directory"),
    case("guest run missing disk", "guest run true --disk /no/disk.img", RUNTIME, "--disk"),
]


def vmfs_cli() -> list[str]:
    """The console script of this installation (what a user runs), else `python -m vmfs`."""
    script = Path(sys.executable).parent / "vmfs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vmfs"]


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    work = tmp_path / "work"
    work.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    loopback = create_loopback_dir(tmp_path / "lb", data_size=1 << 20)
    bad = create_loopback_dir(tmp_path / "badlb", data_size=1 << 20)
    (bad / "vmfs_config").write_bytes(b"")
    return {
        "dir": str(work),
        "file": str(afile),
        "img": str(image),
        "lb": str(loopback),
        "badlb": str(bad),
    }


def run_cli(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*vmfs_cli(), *argv],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(run: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    lines = run.stderr.splitlines()
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert run.returncode == code, run.stderr
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("vmfs: error: "), lines[0]
    assert says.lower() in lines[0].lower(), lines[0]


def test_the_table_covers_every_subcommand() -> None:
    firsts = {c.argv[0] if c.argv else "" for c in CASES}
    assert {"", "serve", "loopback", "replay", "bench", "diagram", "demo", "guest"} <= firsts
    assert len(CASES) >= 30


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_a_mistake_is_one_line(bad: Case, places: dict[str, str], tmp_path: Path) -> None:
    argv = [part.format(**places) for part in bad.argv]
    run = run_cli(argv, tmp_path / "work", bad.env)
    assert_one_line_error(run, bad.code, bad.says)


def test_bench_refuses_a_missing_root_without_creating_it(tmp_path: Path) -> None:
    run = run_cli(["bench", "--root", str(tmp_path / "absent")], tmp_path)
    assert_one_line_error(run, USAGE, "absent")
    assert not (tmp_path / "absent").exists()


def test_verbose_is_accepted_before_and_after_the_subcommand(tmp_path: Path) -> None:
    for argv in (["-v", "replay", "/nonexistent"], ["replay", "-v", "/nonexistent"]):
        assert_one_line_error(run_cli(argv, tmp_path), RUNTIME, "/nonexistent")


def test_version(tmp_path: Path) -> None:
    from vmfs import __version__

    for flag in ("-V", "--version"):
        run = run_cli([flag], tmp_path)
        assert run.returncode == 0 and run.stdout.strip() == f"vmfs {__version__}"


def test_bench_help_lists_the_workloads(tmp_path: Path) -> None:
    from vmfs.tools.benchload import WORKLOADS

    run = run_cli(["bench", "--help"], tmp_path)
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert all(w.name in text for w in WORKLOADS)


def test_loopback_create_makes_a_directory_serve_accepts(tmp_path: Path) -> None:
    run = run_cli(["loopback", "create", str(tmp_path / "lb")], tmp_path)
    assert run.returncode == 0, run.stderr
    names = {p.name for p in (tmp_path / "lb").iterdir()}
    assert {"vmfs_config", "vmfs_command", "vmfs_completion", "vmfs_data"} <= names
    assert {"vmfs_fault", "vmfs_irq", "vmfs_notify"} <= names


def test_journal_in_an_unwritable_loopback_directory(tmp_path: Path) -> None:
    """The loopback files are writable, the directory is not: the journal cannot be made."""
    loopback = create_loopback_dir(tmp_path / "lb", data_size=1 << 20)
    for entry in loopback.iterdir():
        entry.chmod(0o666)
    (tmp_path / "root").mkdir()
    as_owner_only: list[str] = []
    if os.geteuid() == 0:
        # root may write anywhere: hand the directory to nobody and run the driver without the
        # capabilities that override file permissions (it still reads the root-owned checkout)
        os.chown(loopback, pwd.getpwnam("nobody").pw_uid, -1)
        as_owner_only = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    loopback.chmod(0o555)
    try:
        run = subprocess.run(
            [*as_owner_only, *vmfs_cli(), "serve", "--loopback", str(loopback),
             "--root", str(tmp_path / "root")],
            cwd="/", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        loopback.chmod(0o755)
    assert_one_line_error(run, RUNTIME, "journal")
    assert "--state-dir" in run.stderr
