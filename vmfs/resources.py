"""Where vmfs finds the files it needs besides its Python modules, in a checkout or a wheel.

Two such files exist: `csrc/` (the C helpers the cffi extension is built from, needed again by
`vmfs guest build` to cross-compile it for the guest) and `fs_driver_init` (the guest's boot
script). In a checkout, editable install included, they sit at the repository root next to the
`vmfs` package. A built wheel carries copies inside the package, under `vmfs/_shipped/`, put
there by setup.py, because a wheel cannot install files beside its packages.

This module imports nothing from vmfs but its errors: setup.py runs it from the source tree at
build time, before vmfs is installed.
"""

from __future__ import annotations

from pathlib import Path

from vmfs.errors import VmfsError

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DIR_NAME = "_shipped"
# What the wheel must carry, as paths relative to the repository root.
SHIPPED = ("csrc", "fs_driver_init")


def resource_path(name: str) -> Path:
    """The path of `name` (one of SHIPPED), from an installed wheel or from a checkout."""
    if name not in SHIPPED:
        raise ValueError(f"{name!r} is not shipped with vmfs (only {', '.join(SHIPPED)})")
    candidates = (PACKAGE_DIR / SHIPPED_DIR_NAME / name, PACKAGE_DIR.parent / name)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise VmfsError(
        f"cannot find {name} (looked in {candidates[0]} and {candidates[1]}): "
        "reinstall vmfs, or run it from a complete checkout"
    )
