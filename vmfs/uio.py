"""Where the shared regions come from, and how the two sides signal each other.

One small interface, `Transport`, with two implementations: the loopback transport (files and
FIFOs in a directory, no VM needed) and the real UIO transport (devices found in sysfs). The
driver above sees only the interface.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vmfs import wire
from vmfs.shm import copy_from_device

log = logging.getLogger("vmfs.uio")

CONFIG_SIZE = 4096
REGION_NAMES = ("vmfs_config", "vmfs_command", "vmfs_completion", "vmfs_data", "vmfs_fault")


class TransportError(Exception):
    """The regions or signals could not be set up; the message names what is wrong."""


@dataclass(frozen=True)
class RegionSizes:
    """Sizes the config page announces (docs/protocol.md "Config page")."""

    command: int
    completion: int
    data: int
    fault: int

    @classmethod
    def from_config(cls, page: bytes | memoryview) -> RegionSizes:
        return cls(*wire.CONFIG_FAST.unpack_from(page, 0))

    def to_config(self) -> bytes:
        return wire.CONFIG_FAST.pack(self.command, self.completion, self.data, self.fault).ljust(
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

    def native_signals(self) -> tuple[int, int, Any]:
        """(irq fd, notify fd or -1, doorbell address or None) for the native serve loop."""
        ...

    def close(self) -> None: ...


def map_file(path: Path, minimum: int) -> tuple[mmap.mmap, int]:
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


def open_fifo(path: Path) -> int:
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

    The driver maps the existing files and never creates or resizes them (docs/protocol.md
    "Transports").
    """

    direct_io = True

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._maps: list[mmap.mmap] = []
        self._lock = lock_config(self.directory / "vmfs_config")
        try:
            config, _ = map_file(self.directory / "vmfs_config", wire.CONFIG_FAST.size)
            self.sizes = RegionSizes.from_config(config)
            config.close()
            self.sizes.check()
        except BaseException:
            os.close(self._lock)
            raise
        self.command = self._map("vmfs_command", self.sizes.command)
        self.completion = self._map("vmfs_completion", self.sizes.completion)
        self.data = self._map("vmfs_data", self.sizes.data)
        self.fault = self._map("vmfs_fault", 1)
        self._irq = open_fifo(self.directory / "vmfs_irq")
        self._notify = open_fifo(self.directory / "vmfs_notify")
        self.description = f"loopback {self.directory} (data {self.sizes.data} bytes)"

    def _map(self, name: str, size: int) -> memoryview:
        region, actual = map_file(self.directory / name, size)
        self._maps.append(region)
        return memoryview(region)[: max(size, 1) if name != "vmfs_fault" else actual]

    def fileno(self) -> int:
        return self._irq

    def acknowledge(self) -> None:
        drain_fifo(self._irq)

    def notify(self) -> None:
        signal_fifo(self._notify)

    def native_signals(self) -> tuple[int, int, Any]:
        """For the native loop: the doorbell FIFOs (irq to wait on, notify to write)."""
        return self._irq, self._notify, None

    def close(self) -> None:
        for view in (self.command, self.completion, self.data, self.fault):
            view.release()
        for region in self._maps:
            region.close()
        os.close(self._irq)
        os.close(self._notify)
        os.close(self._lock)


def lock_config(config: Path) -> int:
    """Open `config` and hold an exclusive lock on it: one driver per loopback directory.

    A second driver on the same queue would take the first one's commands and corrupt the
    queue; it is refused here instead. The lock goes with the descriptor (and the process).
    """
    try:
        fd = os.open(config, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise TransportError(
            f"cannot open {config}: {e.strerror} "
            f"(create the directory with `vmfs loopback create {config.parent}`)"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TransportError(
            f"{config.parent} is already served by another `vmfs serve` "
            f"(it holds the lock on {config}); stop that one first"
        ) from None
    return fd


UIO_SYSFS_ROOT = "/sys/class/uio"
UIO_DEV_ROOT = "/dev"
UIO_COMPATIBLE = b"generic-uio"


@dataclass(frozen=True)
class UioDevice:
    """One UIO device carrying a vmfs region (docs/protocol.md "Transports")."""

    name: str
    node: str
    path: Path
    map_size: int | None

    def __str__(self) -> str:
        return f"{self.path} ({self.name})"


def _region_name(node: Path) -> str | None:
    """The region name from a device's compatible list, None if the device is not generic-uio."""
    try:
        compatible = (node / "device" / "of_node" / "compatible").read_bytes()
    except OSError:
        return None
    if not compatible.startswith(UIO_COMPATIBLE + b"\0"):
        return None
    if not compatible.endswith(b"\0"):
        raise TransportError(f"{node.name}: compatible {compatible!r} is truncated (no final NUL)")
    second = compatible.split(b"\0")[1]
    if not second:
        return None
    return second.decode("ascii", "replace")


def _map0_size(node: Path) -> int | None:
    try:
        return int((node / "maps" / "map0" / "size").read_text().strip(), 0)
    except (OSError, ValueError):
        return None


def find_uio_devices(
    sysfs_root: str | os.PathLike[str] = UIO_SYSFS_ROOT,
    dev_root: str | os.PathLike[str] = UIO_DEV_ROOT,
) -> dict[str, UioDevice]:
    """The vmfs regions present now, by name; a name given by two devices is an error."""
    found: dict[str, UioDevice] = {}
    root = Path(sysfs_root)
    nodes = sorted(root.glob("uio*"), key=lambda p: (len(p.name), p.name)) if root.is_dir() else []
    for node in nodes:
        name = _region_name(node)
        if name not in REGION_NAMES:
            continue
        device = UioDevice(name, node.name, Path(dev_root) / node.name, _map0_size(node))
        if name in found:
            raise TransportError(f"{name} is provided by both {found[name].node} and {node.name}")
        found[name] = device
    return found


class UioTransport:
    """The real transport: regions are UIO maps, the client's IRQ arrives on vmfs_command.

    The regions are device memory (uncached on AArch64), so the driver must bounce all data
    through private buffers (`direct_io` is False) and copy with `copy_from_device` /
    `copy_to_device`.
    """

    direct_io = False

    def __init__(self, devices: dict[str, UioDevice], irq_fd: int | None = None) -> None:
        missing = [n for n in REGION_NAMES if n not in devices]
        if missing:
            raise TransportError(f"UIO devices missing: {', '.join(missing)}")
        self._maps: list[mmap.mmap] = []
        self._irq = -1
        try:
            config = self._map(devices["vmfs_config"], CONFIG_SIZE)
            self.sizes = RegionSizes.from_config(copy_from_device(config, wire.CONFIG_FAST.size))
            config.release()
            self.sizes.check()
            self.command = self._map(devices["vmfs_command"], self.sizes.command)
            self.completion = self._map(devices["vmfs_completion"], self.sizes.completion)
            self.data = self._map(devices["vmfs_data"], self.sizes.data)
            self.fault = self._map(devices["vmfs_fault"], max(self.sizes.fault, 1))
            self._irq = irq_fd if irq_fd is not None else self._open(devices["vmfs_command"])
            os.set_blocking(self._irq, False)
            self._enable()
        except BaseException:
            self.close()
            raise
        from vmfs._native import ffi, lib

        self._doorbell = ffi.from_buffer("uint8_t[]", self.fault)
        self._store_byte = lib.vmfs_store_byte
        self._ffi = ffi
        self.description = f"uio {devices['vmfs_command'].path} (data {self.sizes.data} bytes)"

    @classmethod
    def discover(
        cls,
        sysfs_root: str | os.PathLike[str] = UIO_SYSFS_ROOT,
        dev_root: str | os.PathLike[str] = UIO_DEV_ROOT,
        wait_seconds: float = 30.0,
        poll_interval: float = 0.25,
    ) -> UioTransport:
        """Find and map the five devices, waiting up to `wait_seconds` for any still missing."""
        import time

        deadline = time.monotonic() + wait_seconds
        reported: list[str] | None = None
        while True:
            devices = find_uio_devices(sysfs_root, dev_root)
            missing = [n for n in REGION_NAMES if n not in devices]
            missing += [str(d.path) for d in devices.values() if not d.path.exists()]
            if not missing:
                return cls(devices)
            if time.monotonic() >= deadline:
                raise TransportError(
                    f"UIO devices missing after {wait_seconds:g} s: {', '.join(missing)} "
                    f"(scanned {sysfs_root}, {dev_root})"
                )
            if missing != reported:
                log.info("waiting for UIO devices: %s", ", ".join(missing))
                reported = missing
            time.sleep(poll_interval)

    @staticmethod
    def _open(device: UioDevice) -> int:
        try:
            return os.open(device.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TransportError(f"cannot open {device}: {e.strerror}") from e

    def _map(self, device: UioDevice, size: int) -> memoryview:
        """Map UIO map 0 (mmap offset 0) of the device, refusing a map smaller than `size`."""
        fd = self._open(device)
        try:
            available = device.map_size
            st = os.fstat(fd)
            if available is None and stat.S_ISREG(st.st_mode):
                available = st.st_size
            if available is not None and available < size:
                raise TransportError(f"{device} is {available} bytes; {size} are required")
            region = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise TransportError(f"cannot map {device}: {e.strerror}") from e
        finally:
            os.close(fd)
        self._maps.append(region)
        return memoryview(region)

    def _enable(self) -> None:
        """Unmask the IRQ: UIO takes a 4-byte 1 (the VMM drops notifications while masked)."""
        os.write(self._irq, struct.pack("<I", 1))

    def fileno(self) -> int:
        return self._irq

    def acknowledge(self) -> None:
        """Read the event count (so the fd stops polling readable), then unmask the IRQ.

        The caller drains the command queue after this: a notification that came while the IRQ
        was masked was dropped by the VMM, and only that re-check finds its command.
        """
        try:
            count = os.read(self._irq, 4)
            if len(count) == 4:
                log.debug("IRQ event count %d", struct.unpack("<I", count)[0])
        except BlockingIOError:
            pass
        self._enable()

    def notify(self) -> None:
        """Ring the doorbell: one byte stored (after a full barrier) to fault page offset 0."""
        self._store_byte(self._doorbell, 1)

    def native_signals(self) -> tuple[int, int, Any]:
        """For the native loop: the UIO irq fd, and the doorbell's address in the fault page."""
        return self._irq, -1, self._doorbell

    def close(self) -> None:
        if getattr(self, "_doorbell", None) is not None:
            self._ffi.release(self._doorbell)
            self._doorbell = None
        for name in ("command", "completion", "data", "fault"):
            view = getattr(self, name, None)
            if view is not None:
                view.release()
        for region in self._maps:
            region.close()
        self._maps.clear()
        if self._irq >= 0:
            os.close(self._irq)
            self._irq = -1
