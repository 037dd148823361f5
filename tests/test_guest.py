"""The harness end to end: a real arm64 guest (one boot for this module) with the stand-in
driver, driven from the host through the shared RAM file, qtest interrupts and the fault byte."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from guest_helpers import booted_guest

from vmfs import wire
from vmfs.guest import REGIONS
from vmfs.guest.session import ProtocolClient, echo_session

pytestmark = pytest.mark.guest

SEED = b"put there by the host before boot\n"


@dataclass
class Guest:
    vmm: object
    client: ProtocolClient
    disk: Path
    early_ids: list[int]
    boot_seconds: float


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    from vmfs.guest.vmm import DRIVER_STANDIN

    def queue_initialise(client: ProtocolClient) -> list[int]:
        return [client.submit(wire.Command.INITIALISE) for _ in range(3)]

    workdir = tmp_path_factory.mktemp("guest")
    started = time.monotonic()
    with booted_guest(workdir, DRIVER_STANDIN, queue_initialise, seed={"/seed.txt": SEED}) as (
        vmm,
        client,
        img,
        early,
    ):
        yield Guest(vmm, client, img, early, time.monotonic() - started)


def test_commands_queued_before_boot_are_served(guest: Guest) -> None:
    for cmd_id in guest.early_ids:
        assert guest.client.result(cmd_id, timeout=120).status == 0


def test_guest_sees_lionsos_style_uio_devices(guest: Guest) -> None:
    status, out = guest.vmm.exec(
        "for d in /sys/class/uio/uio*; do cat $d/name $d/maps/map0/addr $d/maps/map0/size; done;"
        " grep vmfs_command /proc/interrupts; readlink /sys/class/uio/uio0/device/driver"
    )
    assert status == 0, out
    for name, region in REGIONS.items():
        assert f"{name}\n{region.phys:#018x}\n{region.size:#018x}\n" in out
    assert "Edge" in out and "vmfs_command" in out
    assert out.strip().endswith("uio_pdrv_genirq")


def test_irq_driver_doorbell_round_trip(guest: Guest) -> None:
    c = guest.client
    guest.client.result(guest.early_ids[-1], timeout=120)
    transport = c.t
    latencies = []
    for _ in range(5):
        started = time.monotonic()
        cmd_id = c.submit(wire.Command.FILE_SYNC, wire.build_params(wire.Command.FILE_SYNC, fd=1))
        assert transport.wait(30.0), "no doorbell within 30 s of the interrupt"
        c.drain()
        assert [r.status for r in c.answers[cmd_id]] == [0]
        latencies.append(time.monotonic() - started)
    assert max(latencies) < 5.0
    assert not transport.wait(0.2), "a doorbell without a command"


def test_burst_answered_exactly_once(guest: Guest) -> None:
    guest.client.result(guest.early_ids[-1], timeout=120)
    echo_session(guest.client, pipelined=600)  # more than one queue's worth


def test_guest_has_no_network_device(guest: Guest) -> None:
    """Booted with `-nic none`: no NIC, so QEMU needs no network boot ROM package."""
    status, out = guest.vmm.exec("ls /sys/class/net")
    assert status == 0, out
    assert out.split() == ["lo"]


def test_disk_round_trip(guest: Guest) -> None:
    """Runs last: powers the guest off, then reads the image on the host."""
    from vmfs.guest import disk

    status, out = guest.vmm.exec(
        "mount -t vfat /dev/vda /mnt && cat /mnt/seed.txt && mkdir /mnt/guest &&"
        " printf 'written in the guest\\n' > /mnt/guest/note.txt &&"
        " head -c 1048576 /dev/zero | tr '\\0' 'v' > /mnt/guest/big.bin && umount /mnt"
    )
    assert status == 0, out
    assert out == SEED.decode()
    guest.vmm.stop()
    assert disk.list_files(guest.disk) == [
        "/guest/",
        "/guest/big.bin",
        "/guest/note.txt",
        "/seed.txt",
    ]
    assert disk.read_file(guest.disk, "/guest/note.txt") == b"written in the guest\n"
    assert disk.read_file(guest.disk, "/guest/big.bin") == b"v" * 1048576
