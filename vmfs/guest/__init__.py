"""A real arm64 Linux guest for vmfs, booted under QEMU, with the host as VMM and client.

The guest sees the vmfs regions exactly as on LionsOS: five `generic-uio` device-tree nodes bound
by `uio_pdrv_genirq`, a command interrupt, a virtio-blk disk. The host maps the same bytes from
the shared guest-RAM file, injects the interrupt through QEMU's qtest socket and polls the fault
byte for the driver's doorbell. See docs/guest.md.

Host-only modules (build, vmm, disk, session) are imported lazily by `__main__`; `agent` and
`standin` run inside the guest and use only the standard library and `vmfs` itself.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "VMFS_GUEST_CACHE"
MACHINE_CACHE = "/var/cache/vmfs/guest"
# Kernels the initrd boots under: Debian's generic arm64 one, or `kernel.build_small_kernel`'s.
KERNELS = ("debian", "small")


def default_cache() -> Path:
    """Where the guest image is built: $VMFS_GUEST_CACHE, else one directory per machine, so
    every checkout and CI run on the machine reuses one build (a fresh machine builds)."""
    return Path(os.environ.get(CACHE_ENV) or MACHINE_CACHE)


RAM_BASE = 0x40000000
RAM_SIZE = 1024 * 1024 * 1024


class Region:
    """One `vmfs_*` device-tree node: guest-physical address and size.

    A plain class: this package is imported by the in-guest agent, and `dataclasses` costs a
    second of start-up under TCG.
    """

    __slots__ = ("name", "phys", "size")

    def __init__(self, name: str, phys: int, size: int) -> None:
        self.name = name
        self.phys = phys
        self.size = size

    def __repr__(self) -> str:
        return f"Region({self.name!r}, {self.phys:#x}, {self.size:#x})"

    @property
    def ram_offset(self) -> int:
        """Where the region lives in the shared guest-RAM file."""
        return self.phys - RAM_BASE


# The LionsOS vmfs example's sizes, placed in a no-map carve-out at the top of 1 GiB of RAM.
CARVEOUT = Region("vmfs_shared", 0x7BF00000, 0x4100000)
REGIONS: dict[str, Region] = {
    r.name: r
    for r in (
        Region("vmfs_config", 0x7BF00000, 0x1000),
        Region("vmfs_command", 0x7BF10000, 0x8000),
        Region("vmfs_completion", 0x7BF20000, 0x8000),
        Region("vmfs_fault", 0x7BF30000, 0x1000),
        Region("vmfs_data", 0x7C000000, 0x4000000),
    )
}
COMMAND_SPI = 100
