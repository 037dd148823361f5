"""A freshly spawned `vmfs serve` imports only what serving needs before its first answer, and
`vmfs bench --workloads coldstart` measures that start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vmfs.guest.probe import parse_importtime
from vmfs.tools.benchstart import STAT_TARGET, ColdDriver

# Modules a serving driver must not have imported when it answers its first command: the
# construct schemas (and pdb, which construct imports), the tools and the clients, the
# recorder (only `--record` needs it), and what argparse and hashlib would drag in.
NOT_BEFORE_FIRST_ANSWER = (
    "construct", "pdb", "hashlib", "_hashlib", "shutil", "graphviz", "transitions.extensions",
    "vmfs.tools", "vmfs.client", "vmfs.guest", "vmfs.driver.trace", "vmfs.tracefile",
)  # fmt: skip


def imports_before_first_answer(tmp_path: Path) -> set[str]:
    """Spawn `python -X importtime -m vmfs serve` with INITIALISE and a STAT queued and read its
    import log as it stands when the STAT's completion arrives."""
    root = tmp_path / "root"
    root.mkdir()
    (root / STAT_TARGET).write_bytes(b"x")
    driver = ColdDriver(tmp_path, root)
    try:
        driver.spawn_and_wait(python_options=["-X", "importtime"])
        log = driver.log()
    finally:
        driver.close()
    return parse_importtime(log)


def test_serving_imports_no_tooling_and_no_construct_before_its_first_answer(
    tmp_path: Path,
) -> None:
    imported = imports_before_first_answer(tmp_path)
    assert {"vmfs.driver.process", "vmfs.fsm", "transitions", "vmfs._native"} <= imported
    early = sorted(
        name
        for name in imported
        if any(
            name == banned or name.startswith(banned + ".") for banned in NOT_BEFORE_FIRST_ANSWER
        )
    )
    assert early == []


def test_wire_builds_the_construct_schemas_only_when_asked() -> None:
    code = (
        "import sys\n"
        "from vmfs import wire\n"
        "print('construct' in sys.modules)\n"
        "wire.StatRecord\n"
        "print('construct' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfs", "bench", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_coldstart_workload_reports_starts_and_memory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    out = run_bench("--workloads", "coldstart", "--ops", "300", "--json", "--root", str(root))
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)
    assert result["workload"] == "coldstart" and result["errors"] == 0, result
    assert (result["stats"], result["writes"]) == (300, 30)
    assert result["runs"] == 5
    for key in ("vmfs_runs_ms", "bare_runs_ms", "vmfs_runs_cpu_ms", "bare_runs_cpu_ms"):
        assert len(result[key]) == 5 and all(ms > 0 for ms in result[key]), (key, result)
    assert result["vmfs_ms"] == sorted(result["vmfs_runs_ms"])[2]
    assert result["bare_ms"] == sorted(result["bare_runs_ms"])[2]
    assert result["vmfs_cpu_ms"] == sorted(result["vmfs_runs_cpu_ms"])[2]
    assert abs(result["ratio"] - result["vmfs_ms"] / result["bare_ms"]) < 0.01
    # A driver that has served holds at least what a bare interpreter does, and far below the
    # 128 MiB a LionsOS FS VM has.
    assert 0 < result["bare_rss_mib"] < result["peak_rss_mib"] < 128, result
    assert list(root.iterdir()) == []  # its files are removed, and no data file was made


def test_coldstart_table_and_workload_selection(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    out = run_bench("--workloads", "coldstart", "--ops", "64", "--root", str(root))
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| INITIALISE + STAT")]
    assert len(rows) == 1 and "MiB" in rows[0]
    assert "| vmfs ops/s |" not in out.stdout  # no throughput table when no other workload ran
    bad = run_bench("--workloads", "coldboot")
    assert bad.returncode == 2 and "coldstart" in bad.stderr
