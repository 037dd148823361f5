"""The real UIO transport against a fake sysfs tree, regular files for /dev/uioN, and an IRQ
double that behaves like UIO's (4-byte enable writes, 4-byte event-count reads, masked after
each interrupt until re-enabled)."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from vmfs import wire
from vmfs.uio import (
    REGION_NAMES,
    RegionSizes,
    TransportError,
    UioTransport,
    find_uio_devices,
)

SIZES = RegionSizes(command=0x8000, completion=0x8000, data=0x10000, fault=0x1000)


class FakeUio:
    """A fake /sys/class/uio and /dev with one node per added device."""

    def __init__(self, root: Path) -> None:
        self.sysfs = root / "sys"
        self.dev = root / "dev"
        self.sysfs.mkdir()
        self.dev.mkdir()
        self.next = 0

    def add(
        self,
        compatible: bytes,
        size: int,
        content: bytes = b"",
        map_size: int | None = None,
    ) -> str:
        node = f"uio{self.next}"
        self.next += 1
        of_node = self.sysfs / node / "device" / "of_node"
        of_node.mkdir(parents=True)
        (of_node / "compatible").write_bytes(compatible)
        map0 = self.sysfs / node / "maps" / "map0"
        map0.mkdir(parents=True)
        (map0 / "size").write_text(f"0x{size if map_size is None else map_size:08x}\n")
        with open(self.dev / node, "wb") as f:
            f.write(content)
            f.truncate(size)
        return node

    def add_region(self, name: str, **kwargs: int) -> str:
        if name == "vmfs_config":
            return self.add(b"generic-uio\0vmfs_config\0", 4096, SIZES.to_config(), **kwargs)
        size = getattr(SIZES, name.removeprefix("vmfs_"))
        return self.add(b"generic-uio\0" + name.encode() + b"\0", size, **kwargs)

    def add_all(self) -> dict[str, str]:
        return {name: self.add_region(name) for name in REGION_NAMES}

    def discover(self, wait: float = 0.0, irq_fd: int | None = None) -> UioTransport:
        if irq_fd is None:
            return UioTransport.discover(self.sysfs, self.dev, wait_seconds=wait)
        return UioTransport(find_uio_devices(self.sysfs, self.dev), irq_fd=irq_fd)


class FakeUioIrq:
    """The VMM's end of the vmfs_command interrupt, as UIO presents it to the driver."""

    def __init__(self) -> None:
        self.vmm, self.driver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.vmm.setblocking(False)
        self.count = 0
        self.enabled = False
        self.writes: list[bytes] = []

    def driver_fd(self) -> int:
        """A blocking descriptor for the transport, which takes ownership of it."""
        return os.dup(self.driver.fileno())

    def pump(self) -> None:
        """Apply the driver's writes: UIO takes exactly 4 bytes, nonzero = enable."""
        while True:
            try:
                msg = self.vmm.recv(64)
            except BlockingIOError:
                return
            assert len(msg) == 4, f"UIO rejects a {len(msg)}-byte write"
            self.writes.append(msg)
            self.enabled = struct.unpack("<I", msg)[0] != 0

    def fire(self) -> bool:
        """Raise the interrupt; a masked one is dropped, as the VMM drops it."""
        self.pump()
        if not self.enabled:
            return False
        self.enabled = False
        self.count += 1
        self.vmm.send(struct.pack("<I", self.count))
        return True

    def close(self) -> None:
        self.vmm.close()
        self.driver.close()


@pytest.fixture
def fake(tmp_path: Path) -> FakeUio:
    return FakeUio(tmp_path)


@pytest.fixture
def irq():
    double = FakeUioIrq()
    yield double
    double.close()


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_discovery_by_compatible_string_not_node_number(fake: FakeUio) -> None:
    fake.add(b"generic-uio\0net_rx\0", 4096)
    fake.add(b"other-driver\0vmfs_data\0", 4096)
    nodes = {name: fake.add_region(name) for name in reversed(REGION_NAMES)}
    devices = find_uio_devices(fake.sysfs, fake.dev)
    assert set(devices) == set(REGION_NAMES)
    for name, node in nodes.items():
        assert devices[name].node == node
        assert devices[name].path == fake.dev / node
        assert devices[name].map_size == getattr(SIZES, name.removeprefix("vmfs_"), 4096)


def test_maps_regions_with_the_sizes_from_config(fake: FakeUio) -> None:
    nodes = fake.add_all()
    t = fake.discover()
    try:
        assert (len(t.command), len(t.completion), len(t.data)) == (
            SIZES.command,
            SIZES.completion,
            SIZES.data,
        )
        assert t.direct_io is False
        t.data[SIZES.data - 3 :] = b"xyz"
        t.command[8:16] = struct.pack("<Q", 7)
    finally:
        t.close()
    assert (fake.dev / nodes["vmfs_data"]).read_bytes()[-3:] == b"xyz"
    assert (fake.dev / nodes["vmfs_command"]).read_bytes()[8:16] == struct.pack("<Q", 7)


def test_missing_names_are_listed(fake: FakeUio) -> None:
    fake.add_region("vmfs_config")
    fake.add_region("vmfs_command")
    fake.add_region("vmfs_fault")
    with pytest.raises(TransportError) as e:
        fake.discover(wait=0.0)
    assert "vmfs_completion" in str(e.value) and "vmfs_data" in str(e.value)
    assert "vmfs_fault" not in str(e.value)


def test_discover_waits_for_late_devices(fake: FakeUio) -> None:
    for name in REGION_NAMES[:-1]:
        fake.add_region(name)
    late = threading.Timer(0.3, fake.add_region, args=("vmfs_fault",))
    late.start()
    start = time.monotonic()
    t = fake.discover(wait=10.0)
    t.close()
    late.join()
    assert 0.3 <= time.monotonic() - start < 5.0


def test_discover_gives_up_after_the_bound(fake: FakeUio) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError, match="vmfs_config"):
        fake.discover(wait=0.5)
    assert 0.5 <= time.monotonic() - start < 3.0


def test_duplicate_name_names_both_devices(fake: FakeUio) -> None:
    nodes = fake.add_all()
    extra = fake.add_region("vmfs_data")
    with pytest.raises(TransportError) as e:
        fake.discover()
    assert nodes["vmfs_data"] in str(e.value) and extra in str(e.value)


@pytest.mark.parametrize(
    "compatible", [b"generic-uio\0vmfs_comm", b"generic-uio\0vmfs_command", b"generic-uio\0\0\0x"]
)
def test_truncated_compatible_names_the_device(fake: FakeUio, compatible: bytes) -> None:
    fake.add_all()
    node = fake.add(compatible, 4096)
    if compatible.endswith(b"\0"):
        assert set(find_uio_devices(fake.sysfs, fake.dev)) == set(REGION_NAMES)
        return
    with pytest.raises(TransportError, match=f"{node}.*truncated"):
        fake.discover()


def test_undersized_map_names_the_device(fake: FakeUio) -> None:
    for name in REGION_NAMES:
        if name == "vmfs_data":
            node = fake.add_region(name, map_size=SIZES.data // 2)
        else:
            fake.add_region(name)
    with pytest.raises(TransportError) as e:
        fake.discover()
    assert f"{fake.dev / node} (vmfs_data)" in str(e.value)


def test_undersized_queue_in_config_is_refused(fake: FakeUio) -> None:
    small = RegionSizes(wire.QUEUE_REGION_SIZE - 64, SIZES.completion, SIZES.data, SIZES.fault)
    fake.add(b"generic-uio\0vmfs_config\0", 4096, small.to_config())
    for name in REGION_NAMES[1:]:
        fake.add_region(name)
    with pytest.raises(TransportError, match="vmfs_command"):
        fake.discover()


def test_irq_enabled_at_start(fake: FakeUio, irq: FakeUioIrq) -> None:
    fake.add_all()
    t = fake.discover(irq_fd=irq.driver_fd())
    try:
        irq.pump()
        assert irq.writes == [struct.pack("<I", 1)]
        assert irq.fire()
        assert readable(t.fileno())
    finally:
        t.close()


def test_acknowledge_reads_the_count_then_reenables(fake: FakeUio, irq: FakeUioIrq) -> None:
    fake.add_all()
    t = fake.discover(irq_fd=irq.driver_fd())
    try:
        for round_ in range(3):
            assert irq.fire(), f"interrupt {round_} was dropped: not re-enabled"
            assert not irq.fire()
            t.acknowledge()
            assert not readable(t.fileno()), "event count left unread"
            irq.pump()
            assert irq.enabled
        assert len(irq.writes) == 4
    finally:
        t.close()


def test_acknowledge_without_event_does_not_block(fake: FakeUio, irq: FakeUioIrq) -> None:
    fake.add_all()
    t = fake.discover(irq_fd=irq.driver_fd())
    try:
        worker = threading.Thread(target=t.acknowledge, daemon=True)
        worker.start()
        worker.join(timeout=2.0)
        assert not worker.is_alive()
        irq.pump()
        assert irq.enabled and len(irq.writes) == 2
    finally:
        t.close()


def test_notify_stores_one_byte_at_fault_offset_zero(fake: FakeUio) -> None:
    nodes = fake.add_all()
    fault = fake.dev / nodes["vmfs_fault"]
    t = fake.discover()
    try:
        assert fault.read_bytes()[0] == 0
        t.notify()
        content = fault.read_bytes()
        assert content[0] != 0
        assert content[1:] == bytes(SIZES.fault - 1)
    finally:
        t.close()


def test_close_releases_descriptor_and_maps(fake: FakeUio, irq: FakeUioIrq) -> None:
    fake.add_all()
    t = fake.discover(irq_fd=irq.driver_fd())
    fd = t.fileno()
    t.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError):
        t.data[0]
