"""`vmfs bench` runs every workload against every target and checks what it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kernel_caps import NEEDS_MOUNT

from vmfs.cli import main
from vmfs.tools.bench import chosen
from vmfs.tools.benchload import WORKLOADS

COLD_NAME = "cold-randread-4k-qd64"


def test_bench_runs_every_workload_error_free(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "vmfs", "bench", "--ops", "200", "--file-mib", "1", "--json",
         "--root", str(tmp_path / "root")],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    results = json.loads(out.stdout)
    seen = {(r["workload"], r["target"]) for r in results}
    assert len(seen) == 11 * 5
    for r in results:
        assert r["ops"] > 0 and r["errors"] == 0, r
        assert (r["driver_cpu_us_per_op"] is None) == (r["target"] in ("sync", "uring")), r


def test_bench_table_filters_workloads_and_targets(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "vmfs", "bench", "--ops", "100", "--file-mib", "1",
         "--workloads", "stat", "--targets", "vmfs,sync", "--root", str(tmp_path / "root")],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rows = [line for line in out.stdout.splitlines() if line.startswith("| STAT")]
    assert len(rows) == 1 and "| - |" in rows[0]  # no bounce / no-uring / uring figures
    assert list((tmp_path / "root").iterdir()) == []  # its data file is not left behind


def test_the_cold_workload_runs_only_when_named_by_its_beginning() -> None:
    cold = next(w for w in WORKLOADS if w.name == COLD_NAME)
    warm = next(w for w in WORKLOADS if w.name == "randread-4k-qd64")
    assert not chosen(cold, []) and chosen(warm, [])
    assert not chosen(cold, ["randread"]) and chosen(warm, ["randread"])
    assert chosen(cold, ["cold"]) and not chosen(warm, ["cold"])


@NEEDS_MOUNT[0]
@NEEDS_MOUNT[1]
def test_cold_workload_reads_each_block_once_through_every_target(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vmfs", "bench", "--workloads", "cold", "--seconds", "0.3",
         "--cold-mib", "8", "--cold-dir", str(tmp_path), "--targets", "vmfs,sync,uring",
         "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    results = json.loads(out.stdout)
    assert sorted(r["target"] for r in results) == ["sync", "uring", "vmfs"]
    blocks = (8 << 20) // 4096
    for r in results:
        assert r["workload"] == COLD_NAME, r
        assert 0 < r["ops"] <= blocks and r["errors"] == 0, r
        assert r["bytes"] == r["ops"] * 4096, r
        assert (r["driver_cpu_us_per_op"] is None) == (r["target"] != "vmfs"), r
    assert "page cache dropped before each run" in out.stderr
    assert list(tmp_path.iterdir()) == []  # unmounted, image removed


def test_cold_workload_without_root_says_why_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    argv = ["bench", "--workloads", "cold", "--cold-dir", str(tmp_path), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert f"bench: {COLD_NAME} skipped: needs root" in captured.err
    assert list(tmp_path.iterdir()) == []
