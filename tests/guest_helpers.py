"""Booting the arm64 guest once per test module. The build installs what it needs, so a guest
that cannot be built or booted is an error here, never a skip."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    from vmfs.guest import disk
    from vmfs.guest.build import build
    from vmfs.guest.vmm import Vmm

    image = build()
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
