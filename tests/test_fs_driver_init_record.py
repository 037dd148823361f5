"""fs_driver_init passes `--record FILE` when VMFS_RECORD or the kernel's vmfs.record=FILE asks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "fs_driver_init"
ARGV_STANDIN = """#!{python}
import json, sys
with open({out!r}, "w") as f:
    json.dump(sys.argv[1:], f)
"""


def driver_argv(tmp_path: Path, cmdline: str, **env: str) -> list[str]:
    """The arguments fs_driver_init started its driver with (a stand-in that exits 0)."""
    out = tmp_path / "argv.json"
    standin = tmp_path / "standin"
    standin.write_text(ARGV_STANDIN.format(python=sys.executable, out=str(out)))
    standin.chmod(0o755)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    environment = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "VMFS": str(standin),
        "VMFS_CMDLINE": str(tmp_path / "cmdline"),
        **env,
    }
    run = subprocess.run(["sh", str(SCRIPT)], env=environment, capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    ("cmdline", "env", "recorded"),
    [
        ("console=ttyAMA0 quiet", {}, None),
        ("console=ttyAMA0 vmfs.record=/var/tmp/boot.trace quiet", {}, "/var/tmp/boot.trace"),
        ("vmfs.record=/var/tmp/k.trace", {"VMFS_RECORD": "/run/my session.trace"},
         "/run/my session.trace"),
        ("vmfs.record= vmfs.recorder=/x", {}, None),
    ],
)  # fmt: skip
def test_record_option(tmp_path: Path, cmdline: str, env: dict[str, str], recorded: str | None):
    argv = driver_argv(tmp_path, cmdline, **env)
    assert argv[:2] == ["serve", "--uio"]
    if recorded is None:
        assert "--record" not in argv
    else:
        assert argv[argv.index("--record") + 1] == recorded
