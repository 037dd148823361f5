"""Where the shared regions come from, and how the two sides signal each other.

One small interface, `Transport`, with two implementations: the loopback transport (files and
FIFOs in a directory, no VM needed) and the real UIO transport (devices found in sysfs). The
driver above sees only the interface.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vmfs import wire

log = logging.getLogger("vmfs.uio")

CONFIG_SIZE = 4096
REGION_NAMES = ("vmfs_config", "vmfs_command", "vmfs_completion", "vmfs_data", "vmfs_fault")
CONFIG_FORMAT = struct.Struct("<4Q")


class TransportError(Exception):
    """The regions or signals could not be set up; the message names what is wrong."""


@dataclass(frozen=True)
class RegionSizes:
    """Sizes the config page announces (PROTOCOL.md 2.7)."""

    command: int
    completion: int
    data: int
    fault: int

    @classmethod
    def from_config(cls, page: bytes | memoryview) -> RegionSizes:
        return cls(*CONFIG_FORMAT.unpack_from(page, 0))

    def to_config(self) -> bytes:
        return CONFIG_FORMAT.pack(self.command, self.completion, self.data, self.fault).ljust(
            CONFIG_SIZE, b"\0"
        )

    def check(self) -> None:
        for name in ("command", "completion"):
            if getattr(self, name) < wire.QUEUE_REGION_SIZE:
                raise TransportError(
                    f"vmfs_{name} region is {getattr(self, name)} bytes; "
                    f"at least {wire.QUEUE_REGION_SIZE} are required"
                )
        if self.data == 0:
            raise TransportError("vmfs_data region has size 0")


class Transport(Protocol):
    """The driver's view of one connection.

    `command`, `completion` and `data` are writable views of the regions. `direct_io` says
    whether the kernel may read and write the data region itself (ordinary memory) or whether
    every transfer must be bounced through private memory (device memory on real UIO).
    """

    command: memoryview
    completion: memoryview
    data: memoryview
    direct_io: bool
    description: str

    def fileno(self) -> int:
        """A descriptor that becomes readable when the client has signalled."""
        ...

    def acknowledge(self) -> None:
        """Consume pending client signals and re-arm, so a later signal wakes us again."""
        ...

    def notify(self) -> None:
        """Tell the client that completions were published (after they are visible)."""
        ...

    def close(self) -> None: ...


def _map_file(path: Path, minimum: int) -> tuple[mmap.mmap, int]:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        raise TransportError(f"cannot open {path}: {e.strerror}") from e
    try:
        size = os.fstat(fd).st_size
        if size < minimum:
            raise TransportError(f"{path} is {size} bytes; at least {minimum} are required")
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE), size
    finally:
        os.close(fd)


def _open_fifo(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError as e:
        raise TransportError(f"cannot open {path}: {e.strerror}") from e
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise TransportError(f"{path} is not a FIFO")
    return fd


def signal_fifo(fd: int) -> None:
    """Write one wake-up byte; EAGAIN means one is already pending, which is as good."""
    try:
        os.write(fd, b"\1")
    except BlockingIOError:
        pass


def drain_fifo(fd: int) -> int:
    """Read every pending wake-up byte; return how many there were."""
    total = 0
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return total
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if not chunk:
            return total
        total += len(chunk)


class LoopbackTransport:
    """Regions are files in a directory the client created and sized; signals are FIFOs.

    The driver maps the existing files and never creates or resizes them (DESIGN.md).
    """

    direct_io = True

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        config, _ = _map_file(self.directory / "vmfs_config", CONFIG_FORMAT.size)
        self.sizes = RegionSizes.from_config(config)
        config.close()
        self.sizes.check()
        self._maps: list[mmap.mmap] = []
        self.command = self._map("vmfs_command", self.sizes.command)
        self.completion = self._map("vmfs_completion", self.sizes.completion)
        self.data = self._map("vmfs_data", self.sizes.data)
        self.fault = self._map("vmfs_fault", 1)
        self._irq = _open_fifo(self.directory / "vmfs_irq")
        self._notify = _open_fifo(self.directory / "vmfs_notify")
        self.description = f"loopback {self.directory} (data {self.sizes.data} bytes)"

    def _map(self, name: str, size: int) -> memoryview:
        region, actual = _map_file(self.directory / name, size)
        self._maps.append(region)
        return memoryview(region)[: max(size, 1) if name != "vmfs_fault" else actual]

    def fileno(self) -> int:
        return self._irq

    def acknowledge(self) -> None:
        drain_fifo(self._irq)

    def notify(self) -> None:
        signal_fifo(self._notify)

    def close(self) -> None:
        for view in (self.command, self.completion, self.data, self.fault):
            view.release()
        for region in self._maps:
            region.close()
        os.close(self._irq)
        os.close(self._notify)


class SharedIndexWords:
    """Index words in shared memory: single aligned 64-bit atomic accesses (PROTOCOL.md 2.2)."""

    def __init__(self, region: memoryview) -> None:
        from vmfs._native import ffi, lib

        self._base = ffi.cast("char *", ffi.from_buffer(region))
        self._keep = region
        self._load = lib.vmfs_load_acquire
        self._store = lib.vmfs_store_release

    def load(self, offset: int) -> int:
        return self._load(self._base + offset)

    def store(self, offset: int, value: int) -> None:
        self._store(self._base + offset, value)


def copy_from_device(src: memoryview, n: int | None = None) -> bytearray:
    """Copy device memory into a new private buffer with aligned accesses only."""
    from vmfs._native import ffi, lib

    n = len(src) if n is None else n
    out = bytearray(n)
    if n:
        lib.vmfs_copy_aligned(ffi.from_buffer(out), ffi.from_buffer(src), n)
    return out


def copy_to_device(dst: memoryview, data: bytes | bytearray | memoryview) -> None:
    """Copy private bytes into device memory with aligned accesses only."""
    from vmfs._native import ffi, lib

    if len(data):
        lib.vmfs_copy_aligned(ffi.from_buffer(dst), ffi.from_buffer(data), len(data))


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
    """Create and size the loopback files and FIFOs (the client's job, DESIGN.md)."""
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
        config, _ = _map_file(self.directory / "vmfs_config", CONFIG_FORMAT.size)
        self.sizes = RegionSizes.from_config(config)
        config.close()
        self._maps: list[mmap.mmap] = []
        views = []
        for name, size in (
            ("vmfs_command", self.sizes.command),
            ("vmfs_completion", self.sizes.completion),
            ("vmfs_data", self.sizes.data),
        ):
            region, _ = _map_file(self.directory / name, size)
            self._maps.append(region)
            views.append(memoryview(region)[:size])
        self.command, self.completion, self.data = views
        self._irq = _open_fifo(self.directory / "vmfs_irq")
        self._notify = _open_fifo(self.directory / "vmfs_notify")

    def signal(self) -> None:
        signal_fifo(self._irq)

    def wait(self, timeout: float | None) -> bool:
        import select

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


class Share:
    """The data region as the operations use it: copy in once, copy out, or lend to the kernel.

    On ordinary memory (`direct=True`) transfers may go straight between the kernel and the
    share; on device memory every byte is bounced with aligned copies (PROTOCOL.md 2.7).
    """

    def __init__(self, view: memoryview, direct: bool) -> None:
        self.view = view
        self.size = len(view)
        self.direct = direct

    def copy_in(self, offset: int, size: int) -> bytes:
        """The client's bytes at [offset, offset+size), copied out exactly once."""
        if self.direct:
            return bytes(self.view[offset : offset + size])
        return bytes(copy_from_device(self.view[offset : offset + size]))

    def copy_out(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.direct:
            self.view[offset : offset + len(data)] = data
        else:
            copy_to_device(self.view[offset : offset + len(data)], data)

    def window(self, offset: int, size: int) -> memoryview:
        """A view of the share for the kernel to read or fill (only when `direct`)."""
        return self.view[offset : offset + size]
