"""The client's side of the transports: what a native LionsOS client (or the host playing one)
sees of a connection. The loopback side creates and sizes the directory the driver maps."""

from __future__ import annotations

import mmap
import os
import select
import stat
from pathlib import Path
from typing import Protocol

from vmfs import wire
from vmfs.uio import (
    RegionSizes,
    drain_fifo,
    map_file,
    open_fifo,
    signal_fifo,
)


class ClientTransport(Protocol):
    """The client's side of a connection: the same three regions, the opposite signals."""

    command: memoryview
    completion: memoryview
    data: memoryview

    def signal(self) -> None:
        """Tell the server that commands were published."""
        ...

    def wait(self, timeout: float | None) -> bool:
        """Wait until the server notifies (True) or the timeout passes (False)."""
        ...

    def close(self) -> None: ...


LOOPBACK_QUEUE_SIZE = 0x8000
LOOPBACK_DATA_SIZE = 0x4000000
LOOPBACK_FAULT_SIZE = 0x1000


def create_loopback_dir(
    directory: str | os.PathLike[str],
    data_size: int = LOOPBACK_DATA_SIZE,
    queue_size: int = LOOPBACK_QUEUE_SIZE,
) -> Path:
    """Create and size the loopback files and FIFOs (the client's job: docs/protocol.md
    "Transports")."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    sizes = RegionSizes(queue_size, queue_size, data_size, LOOPBACK_FAULT_SIZE)
    (path / "vmfs_config").write_bytes(sizes.to_config())
    for name, size in (
        ("vmfs_command", sizes.command),
        ("vmfs_completion", sizes.completion),
        ("vmfs_data", sizes.data),
        ("vmfs_fault", sizes.fault),
    ):
        (path / name).unlink(missing_ok=True)  # a new queue gets a new inode: a new journal
        with open(path / name, "wb") as f:
            f.truncate(size)
    # A new connection: a restart journal a driver left here belongs to the old queue.
    (path / "journal").unlink(missing_ok=True)
    for fifo in ("vmfs_irq", "vmfs_notify"):
        target = path / fifo
        if target.exists() and not stat.S_ISFIFO(target.lstat().st_mode):
            target.unlink()
        if not target.exists():
            os.mkfifo(target, 0o600)
    return path


class LoopbackClientTransport:
    """Client side of the loopback transport; the directory must exist (create_loopback_dir)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        config, _ = map_file(self.directory / "vmfs_config", wire.CONFIG_FAST.size)
        self.sizes = RegionSizes.from_config(config)
        config.close()
        self._maps: list[mmap.mmap] = []
        views = []
        for name, size in (
            ("vmfs_command", self.sizes.command),
            ("vmfs_completion", self.sizes.completion),
            ("vmfs_data", self.sizes.data),
        ):
            region, _ = map_file(self.directory / name, size)
            self._maps.append(region)
            views.append(memoryview(region)[:size])
        self.command, self.completion, self.data = views
        self._irq = open_fifo(self.directory / "vmfs_irq")
        self._notify = open_fifo(self.directory / "vmfs_notify")

    def signal(self) -> None:
        signal_fifo(self._irq)

    def wait(self, timeout: float | None) -> bool:

        ready, _, _ = select.select([self._notify], [], [], timeout)
        if ready:
            drain_fifo(self._notify)
            return True
        return False

    def notify_fd(self) -> int:
        return self._notify

    def close(self) -> None:
        for view in (self.command, self.completion, self.data):
            view.release()
        for region in self._maps:
            region.close()
        os.close(self._irq)
        os.close(self._notify)
