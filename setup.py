"""The cffi extension (io_uring binding and memory-ordering helpers) is built here at install.

A wheel also carries csrc/ and fs_driver_init inside the package (vmfs/_shipped/): the CLI
needs them after installation (`vmfs guest build` cross-compiles csrc/ for the guest, the guest
boots with fs_driver_init), and vmfs.resources finds them there or, in a checkout, at the root.
"""

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the cffi build script imports vmfs.resources from the source tree

from vmfs.resources import SHIPPED, SHIPPED_DIR_NAME  # noqa: E402


class BuildPyWithShipped(build_py):
    """build_py, plus copies of the repository-root files the installed CLI needs."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install finds them in the checkout
            return
        target = Path(self.build_lib) / "vmfs" / SHIPPED_DIR_NAME
        for name in SHIPPED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)  # keeps fs_driver_init executable


setup(
    cffi_modules=["vmfs/_native_build.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithShipped},
)
