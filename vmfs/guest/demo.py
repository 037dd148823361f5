"""`python -m vmfs.guest demo`: build, boot, drive a session from the host, check the disk."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from vmfs.guest import disk
from vmfs.guest.build import build
from vmfs.guest.session import (
    EXPECTED_FILES,
    EXPECTED_LISTING,
    ProtocolClient,
    echo_session,
    fs_session,
)
from vmfs.guest.vmm import DRIVER_REAL, DRIVER_STANDIN, Vmm
from vmfs.wire import Command

# The driver the demo boots: the real one, started by fs_driver_init from the guest's init.
DEMO_DRIVER = DRIVER_REAL


def check_disk(image: Path, real: bool) -> None:
    """What the host reads from the powered-off disk must be exactly what the session wrote."""
    listing = disk.list_files(image)
    print(f"disk after power-off: {listing}")
    if not real:
        if listing:
            raise SystemExit(f"the stand-in driver must not touch the disk: {listing}")
        return
    if listing != EXPECTED_LISTING:
        raise SystemExit(f"disk holds {listing}, expected {EXPECTED_LISTING}")
    for name, content in EXPECTED_FILES.items():
        if disk.read_file(image, name) != content:
            raise SystemExit(f"{name} on disk differs from what was written")
    print(f"disk contents verified with mtools ({len(EXPECTED_FILES)} files)")


def demo(driver: str = DEMO_DRIVER, cache: Path | None = None, keep: bool = False) -> int:
    real = driver != DRIVER_STANDIN
    t0 = time.monotonic()
    image = build(cache)
    print(f"guest image ready ({time.monotonic() - t0:.1f} s)")
    with tempfile.TemporaryDirectory(prefix="vmfs-demo-") as tmp:
        img = disk.make_fat_image(Path(tmp) / "disk.img")
        with Vmm(image, command=driver, disk=img, keep_run_dir=keep) as vmm:
            vmm.prepare()
            client = ProtocolClient(vmm.client_transport(), log=print)
            print("queued INITIALISE before boot")
            first = client.submit(Command.INITIALISE)
            t1 = time.monotonic()
            vmm.start()
            print(f"guest up: agent started {vmm.wait_ready():.1f} s after QEMU")
            res = client.result(first, timeout=120)
            print(f"  INITIALISE (queued before boot) -> status {res.status} after "
                  f"{time.monotonic() - t1:.1f} s")  # fmt: skip
            print(f"session with {'the real driver' if real else 'the stand-in (echo) driver'}:")
            try:
                (fs_session if real else echo_session)(client)  # type: ignore[operator]
            except Exception:
                print("--- console ---\n" + vmm.console()[-4000:])
                print("--- driver log ---\n" + vmm.command_log()[-4000:])
                raise
            vmm.stop()
            print(f"guest powered off ({time.monotonic() - t1:.1f} s after start)")
            if keep:
                print(f"run dir kept: {vmm.run_dir}")
        check_disk(img, real)
    print(f"demo OK in {time.monotonic() - t0:.1f} s")
    return 0


__all__ = ["DEMO_DRIVER", "DRIVER_REAL", "check_disk", "demo"]
