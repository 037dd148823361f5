"""Booting the arm64 guest once per test module: skip cleanly where it cannot be built."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmfs.guest.session import ProtocolClient


@contextlib.contextmanager
def booted_guest(
    workdir: Path,
    command: str,
    before_boot: Callable[[ProtocolClient], Any],
    env: dict[str, str] | None = None,
    seed: dict[str, bytes] | None = None,
) -> Iterator[tuple[Any, ProtocolClient, Path, Any]]:
    """(vmm, client, disk image, what `before_boot` returned) for a guest running `command`.

    `before_boot` queues commands before QEMU starts, as a LionsOS client may.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("needs a Debian host (apt-get, dpkg) to build the arm64 guest")
    from vmfs.guest import disk
    from vmfs.guest.build import BuildError, build
    from vmfs.guest.vmm import Vmm

    try:
        image = build()
    except (BuildError, OSError) as e:
        pytest.skip(f"cannot build the arm64 guest image: {e}")
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed")
    img = disk.make_fat_image(workdir / "disk.img")
    for path, data in (seed or {}).items():
        disk.write_file(img, path, data)
    vmm = Vmm(image, command=command, disk=img, env=env or {})
    vmm.prepare()
    try:
        client = ProtocolClient(vmm.client_transport(), log=lambda _: None)
        queued = before_boot(client)
        vmm.start()
        vmm.wait_ready()
        yield vmm, client, img, queued
    finally:
        vmm.close()
