"""The `vmfs guest image` initrd, alone in a LionsOS-sized guest (`pytest -m guest -k initrd`).

The archive is inspected with GNU cpio, not with the writer that made it; the boots use only the
initrd (no 9p, no network, one vCPU) and check the disk with mtools afterwards.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vmfs.guest import default_cache
from vmfs.guest.initrd import build_initrd
from vmfs.guest.initrd_demo import run_initrd
from vmfs.guest.probe import probe_imports

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[1]
LIONSOS_WINDOW = 8 * 1024 * 1024  # 0x47000000..0x47800000 in the example's DTS


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("initrd") / "vmfs-initrd.cpio.gz"
    build_initrd(out, default_cache())
    return out


def _member(initrd: Path, name: str) -> bytes:
    raw = subprocess.run(["gzip", "-dc", str(initrd)], check=True, capture_output=True).stdout
    return subprocess.run(
        ["cpio", "-i", "--quiet", "--to-stdout", name], input=raw, check=True, capture_output=True
    ).stdout


def _listing(initrd: Path) -> list[str]:
    """Every file in the archive, and every member of the standard-library zip in it."""
    raw = subprocess.run(["gzip", "-dc", str(initrd)], check=True, capture_output=True).stdout
    out = subprocess.run(["cpio", "-it", "--quiet"], input=raw, check=True, capture_output=True)
    names = out.stdout.decode().split()
    stdlib_zip = zipfile.ZipFile(io.BytesIO(_member(initrd, "usr/lib/python311.zip")))
    return names + [f"usr/lib/python3.11/{n}" for n in stdlib_zip.namelist()]


def test_initrd_build_is_reproducible_and_fits_the_lionsos_window(
    initrd: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again.cpio.gz"
    build_initrd(again, default_cache())
    assert again.read_bytes() == initrd.read_bytes()
    assert initrd.stat().st_size <= LIONSOS_WINDOW


def test_initrd_holds_the_driver_and_no_tooling(initrd: Path) -> None:
    names = set(_listing(initrd))
    assert {"init", "bin/busybox", "usr/bin/python3.11", "usr/bin/vmfs"} <= names
    assert "usr/lib/python3.11/vmfs/driver/process.pyc" in names
    assert "usr/lib/python3.11/vmfs/driver/native.pyc" in names
    assert "usr/lib/python3.11/transitions/core.pyc" in names
    assert not [n for n in names if "/construct/" in n], "serving never imports construct"
    assert not [n for n in names if n.endswith(".py")], "sources shipped"
    tooling = ("vmfs/guest", "vmfs/tools", "vmfs/client", "tests/")
    assert not [n for n in names if any(t in n for t in tooling)]
    assert "lib/aarch64-linux-gnu/libcrypto.so.3" not in names
    script = _member(initrd, "etc/init.d/S99fs_driver_init")
    assert script == (REPO / "fs_driver_init").read_bytes()


def test_initrd_probe_sees_what_serving_imports() -> None:
    names = probe_imports()
    assert {"vmfs.driver.process", "vmfs.uio", "transitions", "_cffi_backend"} <= names
    assert not {"vmfs.tools", "vmfs.tools.bench", "vmfs.client", "construct", "pdb"} & names


def test_initrd_cli_serves_without_guest_tooling() -> None:
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'vmfs.guest' or name.startswith('vmfs.guest.'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from vmfs.cli import main\n"
        "sys.exit(main(['serve', '--help']))\n"
    )
    out = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--uio" in out.stdout


def test_initrd_boots_and_serves_in_128_mib() -> None:
    run = run_initrd(128, log=False, importtime=True)
    assert run.kernel_release.endswith("-arm64")
    assert 0 < run.meminfo["MemTotal"] <= 128 * 1024
    assert run.meminfo["MemAvailable"] > 0
    assert run.driver_status["VmRSS"] > 0
    assert 0 < run.first_completion_uptime < run.first_completion_wall + 1
    assert "/usr/lib/python3.11/vmfs/_native.cpython-311-aarch64-linux-gnu.so" in run.driver_maps
    assert {"vmfs.driver.process", "vmfs.uio", "transitions"} <= run.imported
    assert "Traceback" not in run.console
    assert "ModuleNotFoundError" not in run.console


def test_initrd_boots_and_serves_in_64_mib_on_the_small_kernel() -> None:
    run = run_initrd(64, log=False, kernel="small")
    assert 0 < run.meminfo["MemTotal"] <= 64 * 1024
    assert run.meminfo["MemAvailable"] > 0
    assert 0 < run.first_completion_uptime < run.first_completion_wall + 1
    assert run.kernel_release.endswith("-vmfs")
    # The session passed with the driver it started with: nothing was killed or restarted.
    assert "Out of memory" not in run.console
    assert "restarting" not in run.console
    assert "Traceback" not in run.console
