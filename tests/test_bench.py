"""`vmfs bench` runs every workload against every target and checks what it reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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
