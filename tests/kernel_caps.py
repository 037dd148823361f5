"""What this machine's kernel lets the tests do: the only reason a test may be skipped.

A missing tool is never a reason: scripts/bootstrap installs every tool the suite runs, so a
test that needs one just runs it (and fails loudly if it is not there).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CAP_SYS_ADMIN = 21


def has_capabilities(*caps: int) -> bool:
    """The kernel grants this process every one of these capabilities (effective set)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
                return all(effective >> cap & 1 for cap in caps)
    return False


def may_mount() -> bool:
    """mount(2) and loop set-up need CAP_SYS_ADMIN."""
    return has_capabilities(CAP_SYS_ADMIN)


def has_loop_devices() -> bool:
    return os.path.exists("/dev/loop-control")


def has_filesystem(name: str, module_dir: str) -> bool:
    """Built in or already loaded (/proc/filesystems), or available as a module to load."""
    with open("/proc/filesystems") as f:
        if any(line.split()[-1] == name for line in f if line.strip()):
            return True
    return Path(f"/lib/modules/{os.uname().release}/kernel/fs/{module_dir}").is_dir()


NEEDS_MOUNT = [
    pytest.mark.skipif(
        not may_mount(), reason="kernel has no CAP_SYS_ADMIN for this process (run as root)"
    ),
    pytest.mark.skipif(not has_loop_devices(), reason="kernel has no loop devices"),
]
NEEDS_VFAT = pytest.mark.skipif(not has_filesystem("vfat", "fat"), reason="kernel has no vfat")
