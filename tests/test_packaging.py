"""What a user who installs vmfs from its wheel gets: every file the CLI's commands need.

The wheel is built from a copy of the checkout (so nothing the checkout has lying around, like
an in-place `_native*.so` or `build/`, can stand in for what the wheel should carry), then
installed into a new virtual environment outside the checkout, where `vmfs --help`, `vmfs demo`
and the lookups `vmfs guest build` relies on must work. Building the wheel takes its build
requirements (pyproject.toml) from the package index pip is configured with, as any `pip wheel`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmfs.resources
from vmfs.errors import VmfsError
from vmfs.resources import SHIPPED, SHIPPED_DIR_NAME, resource_path

REPO = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o",
    ".pytest_cache", ".ruff_cache", ".hypothesis", ".cache",
)  # fmt: skip
CHECKOUT_SOURCES = sorted(p.name for p in (REPO / "csrc").iterdir() if p.suffix in (".c", ".h"))


# ---- the lookup, in both layouts ---------------------------------------------------------------


def test_checkout_finds_its_own_files() -> None:
    assert resource_path("csrc") == REPO / "csrc"
    assert resource_path("fs_driver_init") == REPO / "fs_driver_init"


def test_installed_layout_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site-packages" / "vmfs"
    (package / SHIPPED_DIR_NAME / "csrc").mkdir(parents=True)
    (package / SHIPPED_DIR_NAME / "fs_driver_init").write_text("#!/bin/sh\n")
    (tmp_path / "site-packages" / "csrc").mkdir()  # a stray directory beside the package
    monkeypatch.setattr(vmfs.resources, "PACKAGE_DIR", package)
    assert resource_path("csrc") == package / SHIPPED_DIR_NAME / "csrc"
    assert resource_path("fs_driver_init") == package / SHIPPED_DIR_NAME / "fs_driver_init"


def test_missing_file_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmfs.resources, "PACKAGE_DIR", tmp_path / "vmfs")
    with pytest.raises(VmfsError, match="cannot find fs_driver_init") as caught:
        resource_path("fs_driver_init")
    assert "\n" not in str(caught.value)


def test_only_shipped_names_are_looked_up() -> None:
    with pytest.raises(ValueError, match="not shipped"):
        resource_path("README.md")


# ---- the wheel -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel` builds from a clean copy of the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    out = work / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("vmfs-*.whl")
    return built


def test_wheel_carries_what_the_cli_needs(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        members = {info.filename: info for info in archive.infolist()}
        shipped = f"vmfs/{SHIPPED_DIR_NAME}"
        sources = sorted(Path(name).name for name in members if name.startswith(f"{shipped}/csrc/"))
        assert sources == CHECKOUT_SOURCES
        for name in CHECKOUT_SOURCES:
            assert archive.read(f"{shipped}/csrc/{name}") == (REPO / "csrc" / name).read_bytes()
        boot = members[f"{shipped}/fs_driver_init"]
        assert archive.read(boot) == (REPO / "fs_driver_init").read_bytes()
        assert (boot.external_attr >> 16) & 0o111, "fs_driver_init lost its executable bit"
    assert any(name.startswith("vmfs/_native") and name.endswith(".so") for name in members)
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "vmfs").rglob("*.py")}
    assert modules <= set(members), sorted(modules - set(members))
    assert not [name for name in members if name.split("/")[0] in SHIPPED], (
        "files outside the package would land in site-packages' top level"
    )


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtual environment with the wheel installed; its `bin/` directory.

    The dependencies come from this test run's environment through a .pth line, so the test
    needs no package index; vmfs itself comes only from the wheel.
    """
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "zz-test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield env_dir / "bin"


def run_installed(bin_dir: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_installed_cli_runs_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    helped = run_installed(installed, tmp_path, "vmfs", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "demo" in helped.stdout
    demo = run_installed(installed, tmp_path, "vmfs", "demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.rstrip().endswith("OK"), demo.stdout


def test_installed_package_finds_its_shipped_files(installed: Path, tmp_path: Path) -> None:
    """What `vmfs guest build` and the guest's boot need, from the installed copy only."""
    probe = (
        "import vmfs, vmfs._native_build as b; from vmfs.resources import resource_path as r; "
        "print(vmfs.__file__); print(r('csrc')); print(r('fs_driver_init')); "
        "print(len(b.SOURCE))"
    )
    proc = run_installed(installed, tmp_path, "python", "-c", probe)
    assert proc.returncode == 0, proc.stderr
    package_file, csrc, boot, source_length = proc.stdout.split("\n")[:4]
    package = Path(package_file).parent
    assert package.is_relative_to(installed.parent), package
    assert Path(csrc) == package / SHIPPED_DIR_NAME / "csrc"
    assert Path(boot) == package / SHIPPED_DIR_NAME / "fs_driver_init"
    assert os.access(boot, os.X_OK)
    assert int(source_length) > sum((REPO / "csrc" / n).stat().st_size for n in CHECKOUT_SOURCES)
