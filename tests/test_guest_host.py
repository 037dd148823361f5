"""Host-side pieces of the guest harness that need no VM: layout, DTB fragment, disk, stand-in."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from vmfs import wire
from vmfs.guest import CARVEOUT, RAM_BASE, RAM_SIZE, REGIONS
from vmfs.guest.qemu import vmfs_nodes
from vmfs.guest.standin import serve_batch


def test_regions_sit_inside_the_carveout_at_the_top_of_ram() -> None:
    assert CARVEOUT.phys + CARVEOUT.size == RAM_BASE + RAM_SIZE
    for r in REGIONS.values():
        assert CARVEOUT.phys <= r.phys and r.phys + r.size <= CARVEOUT.phys + CARVEOUT.size
    sizes = {name: r.size for name, r in REGIONS.items()}
    assert sizes == {
        "vmfs_config": 0x1000,
        "vmfs_command": 0x8000,
        "vmfs_completion": 0x8000,
        "vmfs_fault": 0x1000,
        "vmfs_data": 0x4000000,
    }


def test_dtb_fragment_has_five_generic_uio_nodes_and_one_interrupt() -> None:
    text = vmfs_nodes()
    assert text.count('compatible = "generic-uio"') == 5
    assert text.count("interrupts = <0x0 100 0x1>") == 1
    assert "vmfs_command@7bf10000" in text and "no-map" in text


def test_fat_image_round_trip(tmp_path: Path) -> None:
    from vmfs.guest import disk

    img = disk.make_fat_image(tmp_path / "d.img", size_mib=16)
    assert disk.first_partition(img) == (1 << 20, 15 << 20)
    assert disk.list_files(img) == []
    disk.write_file(img, "/a.txt", b"abc")
    assert disk.list_files(img) == ["/a.txt"]
    assert disk.read_file(img, "/a.txt") == b"abc"


def test_dtb_is_dumped_from_the_very_machine_options_that_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmfs.guest import vmm as vmm_mod
    from vmfs.guest.build import GuestImage

    dumped: list[list[str]] = []

    def fake_make_dtb(qemu: str, machine_args: list[str], directory: Path) -> Path:
        dumped.append(list(machine_args))
        return directory / "fake.dtb"

    monkeypatch.setattr(vmm_mod, "make_dtb", fake_make_dtb)
    image = GuestImage(str(tmp_path), "6.1.0-0-arm64", "vmlinuz", "initrd", "rootfs", "so", "bb")
    vmm = vmm_mod.Vmm(image, smp=3)
    vmm.run_dir = tmp_path / "run"
    vmm.ram_path = tmp_path / "ram"
    command = vmm.qemu_command()
    assert len(dumped) == 1
    machine = dumped[0]
    assert command[1 : 1 + len(machine)] == machine
    assert command[command.index("-dtb") + 1] == str(tmp_path / "run" / "fake.dtb")
    pairs = list(itertools.pairwise(machine))
    assert ("-nic", "none") in pairs and ("-smp", "3") in pairs
    assert ("-M", "virt,memory-backend=ram0") in pairs
    assert f"mem-path={tmp_path / 'ram'}" in machine[machine.index("-object") + 1]
    rest = command[1 + len(machine) :]
    assert not {"-M", "-machine", "-smp", "-m", "-cpu", "-accel", "-nic", "-net"} & set(rest)


def test_standin_answers_each_command_once_within_free_slots() -> None:
    commands = wire.QueueView(memoryview(bytearray(wire.QUEUE_REGION_SIZE)))
    completions = wire.QueueView(memoryview(bytearray(wire.QUEUE_REGION_SIZE)))
    for i in range(5):
        commands.push(wire.build_command(1000 + i, 99))
    completions.publish_tail(wire.QUEUE_CAPACITY - 3)  # only three free completion slots
    assert serve_batch(commands, completions) == 3
    assert commands.length() == 2
    completions.publish_head(wire.QUEUE_CAPACITY)  # the client consumed everything
    assert serve_batch(commands, completions) == 2
    first = wire.QUEUE_CAPACITY - 3
    ids = [
        wire.COMPLETION_FAST.unpack_from(completions.peek(i))[0] for i in range(first, first + 5)
    ]
    assert ids == [1000, 1001, 1002, 1003, 1004]


def test_guest_cache_is_per_machine_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmfs.guest import default_cache

    monkeypatch.delenv("VMFS_GUEST_CACHE", raising=False)
    assert default_cache() == Path("/var/cache/vmfs/guest")
    monkeypatch.setenv("VMFS_GUEST_CACHE", "/tmp/elsewhere")
    assert default_cache() == Path("/tmp/elsewhere")


def test_vmfs_guest_subcommand_delegates_to_the_harness() -> None:
    from vmfs.cli import build_parser
    from vmfs.guest.__main__ import run_action

    args = build_parser().parse_args(["guest", "--cache", "/x", "demo", "--driver", "standin"])
    assert (args.action, args.driver, args.cache) == ("demo", "standin", Path("/x"))
    assert args.func.__name__ == "_guest" and callable(run_action)
