"""Where the initrd harness puts the vmfs regions: never under QEMU's DTB (no boot needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmfs.guest import CARVEOUT, RAM_BASE
from vmfs.guest.initrd_vm import regions_above, regions_offset_mib

MIB = 1024 * 1024


def qemu_places_dtb(ram_bytes: int) -> int:
    """QEMU's rule (hw/arm/boot.c, direct kernel boot, no -initrd): the DTB starts at
    RAM_BASE + min(ram/2, 128 MiB), rounded up to 2 MiB."""
    start = min(ram_bytes // 2, 128 * MIB)
    return RAM_BASE + (start + 2 * MIB - 1) // (2 * MIB) * (2 * MIB)


@given(st.integers(min_value=32, max_value=1024))
def test_the_regions_are_above_the_guest_and_clear_of_the_dtb(guest_mib: int) -> None:
    regions, span = regions_above(guest_mib)
    qemu_ram = (regions_offset_mib(guest_mib) + 72) * MIB
    dtb = qemu_places_dtb(qemu_ram)
    assert span.phys >= RAM_BASE + guest_mib * MIB
    assert span.phys + span.size <= RAM_BASE + qemu_ram
    assert dtb + 2 * MIB <= span.phys or dtb >= span.phys + span.size
    for r in regions.values():
        assert span.phys <= r.phys and r.phys + r.size <= span.phys + span.size


def test_a_72_mib_guest_moves_the_regions_off_the_dtb() -> None:
    # Directly above 72 MiB, QEMU's DTB (at 144 MiB / 2) would overwrite vmfs_config.
    assert qemu_places_dtb((72 + 72) * MIB) == RAM_BASE + 72 * MIB
    _, span = regions_above(72)
    assert span.phys > RAM_BASE + 72 * MIB


def test_128_mib_keeps_the_regions_right_above_the_guest() -> None:
    _, span = regions_above(128)
    assert span.phys == RAM_BASE + 128 * MIB
    assert span.size == CARVEOUT.size
