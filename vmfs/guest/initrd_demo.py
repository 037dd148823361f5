"""`vmfs guest demo --initrd`: the initrd alone in a LionsOS-sized guest serves a session.

Builds the initrd, boots it (`initrd_vm.InitrdVm`) with a FAT partition as /dev/vda, queues
INITIALISE before boot, runs the demo session, reads the guest's memory figures and the driver's
RSS and mapped files through the console shell, powers off and checks the disk with mtools.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmfs.guest import default_cache, disk
from vmfs.guest.build import build
from vmfs.guest.demo import check_disk
from vmfs.guest.initrd import build_initrd
from vmfs.guest.initrd_vm import InitrdVm
from vmfs.guest.kernel import build_small_kernel
from vmfs.guest.session import ProtocolClient, fs_session
from vmfs.guest.vmm import GuestError
from vmfs.wire import Command, Status

DRIVER_PROCESS = "python3.11"


@dataclass
class InitrdRun:
    """What one boot measured (kB figures are the guest's /proc)."""

    guest_mib: int
    initrd_bytes: int
    kernel: str = "debian"
    kernel_release: str = ""  # `uname -r` in the guest
    first_completion_uptime: float = 0.0  # guest seconds since kernel start
    first_completion_wall: float = 0.0  # host seconds since QEMU started
    meminfo: dict[str, int] = field(default_factory=dict)
    driver_status: dict[str, int] = field(default_factory=dict)
    driver_maps: list[str] = field(default_factory=list)
    imported: set[str] = field(default_factory=set)
    console: str = ""


def _kb_fields(text: str) -> dict[str, int]:
    # Not anchored: the console shell's prompt may still precede the first line.
    return {m[1]: int(m[2]) for m in re.finditer(r"(\w+):\s+(\d+) kB", text)}


def run_initrd(
    guest_mib: int = 128,
    cache: Path | None = None,
    keep: bool = False,
    log: bool = True,
    importtime: bool = False,
    kernel: str = "debian",
) -> InitrdRun:
    """Boot, serve the session, measure, power off, check the disk; raise on any mismatch."""
    say = print if log else (lambda *_a: None)
    cache = cache or default_cache()
    image = build(cache)
    kernel_image = build_small_kernel(cache) if kernel == "small" else None
    with tempfile.TemporaryDirectory(prefix="vmfs-initrd-demo-") as tmp:
        made = build_initrd(Path(tmp) / "vmfs-initrd.cpio.gz", cache)
        say(f"initrd: {made.compressed} bytes gzip, {made.unpacked} unpacked")
        img = disk.make_fat_image(Path(tmp) / "disk.img")
        extra = "PYTHONPROFILEIMPORTTIME=1" if importtime else ""
        result = InitrdRun(guest_mib, made.compressed, kernel)
        vm = InitrdVm(
            image, made.path, img, guest_mib=guest_mib, extra_append=extra, kernel=kernel_image
        )
        try:
            client = ProtocolClient(vm.client_transport(), log=say)
            first = client.submit(Command.INITIALISE)
            vm.start()
            res = client.result(first, timeout=300)
            answered = time.monotonic()
            result.first_completion_wall = answered - vm.started_at
            if res.status != Status.SUCCESS:
                raise GuestError(f"INITIALISE -> {res}; console:\n{vm.console()[-3000:]}")
            say(f"INITIALISE (queued before boot) answered {result.first_completion_wall:.1f} s "
                "after QEMU started")  # fmt: skip
            vm.wait_shell()
            _, up = vm.run("cut -d' ' -f1 /proc/uptime")
            uptime = float(up.split()[-1])
            result.first_completion_uptime = uptime - (time.monotonic() - answered)
            fs_session(client, initialise=False)
            _, release = vm.run("uname -r")
            result.kernel_release = release.split()[-1]
            _, meminfo = vm.run("cat /proc/meminfo")
            result.meminfo = _kb_fields(meminfo)
            _, status = vm.run(f"cat /proc/$(pidof {DRIVER_PROCESS})/status")
            result.driver_status = _kb_fields(status)
            _, maps = vm.run(f"cat /proc/$(pidof {DRIVER_PROCESS})/maps")
            files = (ln.split()[-1] for ln in maps.splitlines() if len(ln.split()) >= 6)
            result.driver_maps = sorted({f for f in files if f.startswith("/")})
            vm.poweroff()
            result.console = vm.console()
            result.imported = {
                m[1] for m in re.finditer(r"import time:.*\|\s+(\S+)\s*$", result.console, re.M)
            }
        finally:
            vm.close()
            if keep:
                say(f"run dir kept: {vm.run_dir}")
            else:
                shutil.rmtree(vm.run_dir, ignore_errors=True)
        check_disk(img, real=True)
    m, s = result.meminfo, result.driver_status
    say(f"guest {guest_mib} MiB, {kernel} kernel: MemTotal {m.get('MemTotal')} kB, "
        f"MemFree {m.get('MemFree')} kB, "
        f"MemAvailable {m.get('MemAvailable')} kB; driver VmRSS {s.get('VmRSS')} kB "
        f"(peak {s.get('VmHWM')} kB); first completion at guest uptime "
        f"{result.first_completion_uptime:.1f} s")  # fmt: skip
    return result


def demo_initrd(
    cache: Path | None = None, keep: bool = False, guest_mib: int = 128, kernel: str = "debian"
) -> int:
    started = time.monotonic()
    run_initrd(guest_mib, cache, keep, kernel=kernel)
    print(f"initrd demo OK in {time.monotonic() - started:.1f} s")
    return 0
