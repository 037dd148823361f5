"""A stand-in driver for proving the harness: it answers every command with SUCCESS.

It uses the guest exactly as the real driver must: finds the five UIO devices by their
device-tree `compatible` (not by number), sizes regions from the config page, enables and waits
for the command interrupt through /dev/uioN, echoes each command's id as a completion (status 0,
data 0) and rings the doorbell with a one-byte store to the fault page. Commands already queued
when it starts are answered first. It also imports vmfs's arm64 cffi extension, so a run proves
that too.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import sys
from pathlib import Path

from vmfs import wire
from vmfs.shm import SharedIndexWords
from vmfs.uio import REGION_NAMES, RegionSizes

UIO_CLASS = Path("/sys/class/uio")
ENABLE = struct.pack("<I", 1)


def find_devices() -> dict[str, int]:
    """{vmfs_<name>: N} for /dev/uioN, matched on the second `compatible` string."""
    found: dict[str, int] = {}
    for dev in sorted(UIO_CLASS.glob("uio*")):
        compat = (dev / "device/of_node/compatible").read_bytes().split(b"\0")
        if len(compat) > 1 and compat[0] == b"generic-uio":
            found[compat[1].decode()] = int(dev.name.removeprefix("uio"))
    missing = set(REGION_NAMES) - set(found)
    if missing:
        raise SystemExit(f"standin: UIO devices missing: {sorted(missing)}")
    return found


def map_device(n: int, size: int) -> mmap.mmap:
    fd = os.open(f"/dev/uio{n}", os.O_RDWR | os.O_SYNC)
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
    finally:
        os.close(fd)


def serve_batch(commands: wire.QueueView, completions: wire.QueueView) -> int:
    """Answer what is queued, bounded by free completion slots; return how many."""
    n = 0
    while commands.length() and completions.length() < wire.QUEUE_CAPACITY:
        message = commands.pop()
        assert message is not None
        cmd_id = wire.MESSAGE_HEADER.unpack_from(message)[0]
        completions.push(wire.COMPLETION_FAST.pack(cmd_id, 0, 0))
        n += 1
    return n


def main() -> int:
    from vmfs._native import ffi, lib

    devices = find_devices()
    config = map_device(devices["vmfs_config"], 4096)
    sizes = RegionSizes.from_config(config)
    sizes.check()
    regions = {
        "vmfs_command": memoryview(map_device(devices["vmfs_command"], sizes.command)),
        "vmfs_completion": memoryview(map_device(devices["vmfs_completion"], sizes.completion)),
        "vmfs_fault": memoryview(map_device(devices["vmfs_fault"], sizes.fault)),
    }
    commands = wire.QueueView(regions["vmfs_command"], SharedIndexWords(regions["vmfs_command"]))
    completions = wire.QueueView(
        regions["vmfs_completion"], SharedIndexWords(regions["vmfs_completion"])
    )
    doorbell = ffi.cast("char *", ffi.from_buffer(regions["vmfs_fault"]))
    irq = os.open(f"/dev/uio{devices['vmfs_command']}", os.O_RDWR)
    print(f"standin: devices {devices}, sizes {sizes}", flush=True)
    total = 0
    while True:
        os.write(irq, ENABLE)
        served = serve_batch(commands, completions)
        if served:
            total += served
            lib.vmfs_store_byte(doorbell, 1)
            print(f"standin: answered {served} (total {total})", flush=True)
            continue
        select.select([irq], [], [])
        os.read(irq, 4)


if __name__ == "__main__":
    sys.exit(main())
