"""The host as the guest's VMM: boot QEMU, share RAM, inject the command IRQ, watch the doorbell.

Life of one guest:

    vmm = Vmm(image, command=DRIVER_STANDIN, disk=path)
    vmm.prepare()                 # RAM file with the config page, run dir, DTB
    client = vmm.client_transport()   # usable now: commands queued before boot are served later
    vmm.start()                   # QEMU runs; the guest's init starts `command`
    ...
    vmm.stop()                    # the guest kills the command, unmounts, powers off

The run directory is shared with the guest over 9p as /vmfs-run: it holds the per-boot init
script, the vmfs sources staged for the guest's Python, the console log and the agent's files.
"""

from __future__ import annotations

import importlib.util
import logging
import mmap
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmfs.errors import VmfsError
from vmfs.guest import CARVEOUT, RAM_BASE, RAM_SIZE, REGIONS
from vmfs.guest.build import GuestImage, guest_python, precompile
from vmfs.guest.qemu import Qmp, Qtest, make_dtb
from vmfs.resources import PACKAGE_DIR, SHIPPED_DIR_NAME, resource_path
from vmfs.uio import CONFIG_SIZE, RegionSizes

log = logging.getLogger("vmfs.guest.vmm")

QEMU = "qemu-system-aarch64"
GUEST_RUN = "/vmfs-run"
# What the guest's init runs. Swapping the stand-in for the real driver is this one choice.
DRIVER_REAL = f"{GUEST_RUN}/fs_driver_init"
DRIVER_STANDIN = "python3 -m vmfs.guest.standin"
PYTHON_DEPS = ("construct", "transitions", "six")

INIT_SH = """#!/bin/sh
# Per-boot init (PID 1 after switch_root), the guest side of what LionsOS's initramfs does.
export PATH={run}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONPATH={run}/py PYTHONDONTWRITEBYTECODE=1 HOME=/root
echo "vmfs-guest: init at $(cut -d" " -f1 /proc/uptime)"
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
modprobe uio_pdrv_genirq of_id=generic-uio
modprobe -a virtio_blk vfat nls_utf8 nls_cp437 nls_iso8859_1
. {run}/env.sh
echo "vmfs-guest: modules loaded at $(cut -d" " -f1 /proc/uptime)"
python3 -m vmfs.guest.agent {run}
sync
busybox poweroff -f
"""


def stage_python(dest: Path, native_ext: Path, rootfs: Path) -> None:
    """Put vmfs (with its arm64 extension) and its pure-Python dependencies where the guest
    imports them; compiled here, because compiling under TCG costs seconds per boot."""
    shutil.copytree(
        PACKAGE_DIR,
        dest / "vmfs",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.o", SHIPPED_DIR_NAME),
    )
    shutil.copy2(native_ext, dest / "vmfs" / native_ext.name)
    for name in PYTHON_DEPS:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(
                origin.parent, dest / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(origin, dest / origin.name)
    precompile([dest], dest.parent, guest_python(rootfs), GUEST_RUN)


@dataclass
class Vmm:
    """One guest boot. See the module docstring for the sequence."""

    image: GuestImage
    command: str = DRIVER_STANDIN
    disk: Path | None = None
    disk_partition: bool = True
    env: dict[str, str] = field(default_factory=dict)
    smp: int = 2
    keep_run_dir: bool = False
    run_dir: Path = field(init=False)
    ram_path: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._map: mmap.mmap | None = None
        self._views: dict[str, memoryview] = {}
        self.qmp: Qmp | None = None
        self.qtest: Qtest | None = None
        self.gic = ""
        self.started_at = 0.0

    # ---- set-up before boot -------------------------------------------------------------

    def prepare(self) -> None:
        """Create the RAM file (config page written), the run dir and its contents."""
        self.run_dir = Path(tempfile.mkdtemp(prefix="vmfs-guest-"))
        fd, name = tempfile.mkstemp(prefix="vmfs-ram-", dir="/dev/shm")
        self.ram_path = Path(name)
        os.ftruncate(fd, RAM_SIZE)
        os.close(fd)
        self._map_regions()
        sizes = RegionSizes(
            REGIONS["vmfs_command"].size,
            REGIONS["vmfs_completion"].size,
            REGIONS["vmfs_data"].size,
            REGIONS["vmfs_fault"].size,
        )
        self._views["vmfs_config"][:CONFIG_SIZE] = sizes.to_config()
        (self.run_dir / "bin").mkdir()
        (self.run_dir / "exec").mkdir()
        stage_python(self.run_dir / "py", Path(self.image.native_ext), Path(self.image.rootfs))
        vmfs_cmd = self.run_dir / "bin" / "vmfs"
        vmfs_cmd.write_text(
            "#!/bin/sh\nexec python3 -c 'import sys; from vmfs.cli import main; "
            'sys.exit(main())\' "$@"\n'
        )
        vmfs_cmd.chmod(0o755)
        shutil.copy2(resource_path("fs_driver_init"), self.run_dir / "fs_driver_init")
        env = {"VMFS": f"{GUEST_RUN}/bin/vmfs", "BLOCK_DEVICE": "/dev/vda", "MOUNT_POINT": "/mnt"}
        env.update(self.env)
        (self.run_dir / "env.sh").write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        )
        (self.run_dir / "command").write_text(self.command + "\n")
        (self.run_dir / "init.sh").write_text(INIT_SH.format(run=GUEST_RUN))

    def _map_regions(self) -> None:
        fd = os.open(self.ram_path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, CARVEOUT.size, offset=CARVEOUT.ram_offset)
        finally:
            os.close(fd)
        whole = memoryview(self._map)
        for r in REGIONS.values():
            start = r.phys - CARVEOUT.phys
            self._views[r.name] = whole[start : start + r.size]

    def region(self, name: str) -> memoryview:
        """A host view of one vmfs region (the same bytes the guest maps through UIO)."""
        return self._views[name]

    def machine_args(self) -> list[str]:
        """The machine the guest boots on; the DTB is dumped from exactly these options.

        No NIC (`-nic none`): the guest has no network, and QEMU's default NIC would need a
        boot ROM from a package (ipxe-qemu) that nothing else here uses."""
        mem = RAM_SIZE // (1024 * 1024)
        return [
            "-M", "virt,memory-backend=ram0", "-accel", "tcg", "-cpu", "cortex-a72",
            "-smp", str(self.smp), "-m", str(mem), "-nic", "none",
            "-object", f"memory-backend-file,id=ram0,size={mem}M,mem-path={self.ram_path},share=on",
        ]  # fmt: skip

    def qemu_command(self) -> list[str]:
        machine = self.machine_args()
        dtb = make_dtb(QEMU, machine, self.run_dir)
        args = list(machine)
        run = self.run_dir
        append = "console=ttyAMA0 panic=-1 loglevel=4 uio_pdrv_genirq.of_id=generic-uio"
        args += [
            "-kernel", self.image.kernel, "-initrd", self.image.initramfs, "-dtb", str(dtb),
            "-append", append, "-no-reboot", "-display", "none", "-monitor", "none",
            "-serial", f"file:{run / 'console.log'}",
            "-fsdev", f"local,id=rootfs,path={self.image.rootfs},security_model=none,readonly=on",
            "-device", "virtio-9p-device,fsdev=rootfs,mount_tag=rootfs",
            "-fsdev", f"local,id=vmfsrun,path={run},security_model=none",
            "-device", "virtio-9p-device,fsdev=vmfsrun,mount_tag=vmfsrun",
            "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
            "-qtest", f"unix:{run / 'qtest.sock'},server=on,wait=off",
        ]  # fmt: skip
        if self.disk is not None:
            args += self._disk_args()
        return [QEMU, *args]

    def _disk_args(self) -> list[str]:
        """The disk as virtio-blk. As on LionsOS, the guest's /dev/vda is the FAT partition
        itself (the block virtualiser hands out partitions); `disk_partition=False` attaches
        the whole MBR disk instead."""
        from vmfs.guest.disk import first_partition

        assert self.disk is not None
        blockdev = f"driver=raw,node-name=disk0,file.driver=file,file.filename={self.disk}"
        if self.disk_partition:
            offset, size = first_partition(self.disk)
            blockdev += f",offset={offset},size={size}"
        return ["-blockdev", blockdev, "-device", "virtio-blk-device,drive=disk0"]

    # ---- running ------------------------------------------------------------------------

    def start(self) -> None:
        cmd = self.qemu_command()
        log.debug("$ %s", shlex.join(cmd))
        self.started_at = time.monotonic()
        with open(self.run_dir / "qemu.log", "wb") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.qmp = Qmp(self.run_dir / "qmp.sock")
        self.qtest = Qtest(self.run_dir / "qtest.sock")
        self.gic = self.qmp.find_gic()

    def raise_irq(self) -> None:
        """Inject the vmfs_command interrupt; before QEMU runs there is nobody to tell (the
        driver processes whatever is queued when it starts)."""
        if self.qtest is not None:
            self.qtest.pulse(self.gic)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait until the guest's agent runs; return seconds since QEMU started."""
        return self._wait_file(self.run_dir / "ready", timeout, "guest agent start")

    def _wait_file(self, path: Path, timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if not self.alive():
                raise GuestError(f"QEMU exited before {what}; console:\n{self.console()[-3000:]}")
            if time.monotonic() > deadline:
                raise GuestError(
                    f"timed out waiting for {what}; console:\n{self.console()[-3000:]}"
                )
            time.sleep(0.05)
        return time.monotonic() - self.started_at

    def exec(self, script: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a shell script inside the guest (through the agent); return (status, output)."""
        req = self.run_dir / "exec"
        n = len(list(req.glob("*.sh")))
        tmp = req / f"{n:04d}.tmp"
        tmp.write_text(script)
        tmp.rename(req / f"{n:04d}.sh")
        self._wait_file(req / f"{n:04d}.rc", timeout, f"guest exec {script!r}")
        out = (req / f"{n:04d}.out").read_text(errors="replace")
        return int((req / f"{n:04d}.rc").read_text()), out

    def console(self) -> str:
        try:
            return (self.run_dir / "console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def command_log(self) -> str:
        try:
            return (self.run_dir / "command.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 60.0) -> int | None:
        """Ask the guest to stop the command, unmount and power off; return the command's exit
        status if it had ended by itself, else None. Forces QEMU down if the guest hangs."""
        if self.process is None:
            return None
        if self.alive():
            (self.run_dir / "stop").write_text("")
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("guest did not power off in %.0f s; killing QEMU", timeout)
                self.process.kill()
                self.process.wait()
        for conn in (self.qmp, self.qtest):
            if conn is not None:
                conn.close()
        self.qmp = self.qtest = None
        rc = self.run_dir / "command.rc"
        return int(rc.read_text()) if rc.exists() else None

    def close(self) -> None:
        """Stop the guest if needed and release the RAM file and (unless kept) the run dir."""
        self.stop()
        for view in self._views.values():
            view.release()
        self._views.clear()
        if self._map is not None:
            self._map.close()
            self._map = None
        self.ram_path.unlink(missing_ok=True)
        if not self.keep_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Vmm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def client_transport(self) -> GuestClientTransport:
        return GuestClientTransport(self)


class GuestError(VmfsError):
    """The guest died, hung, or did not get as far as expected; carries the console tail."""


class GuestClientTransport:
    """A `ClientTransport` for a client on the host talking to the driver in the guest.

    The regions are views of the shared RAM file at `phys - RAM_BASE`. `signal` injects the
    command IRQ edge; `wait` polls the fault byte (plain RAM here, so the doorbell store is not
    trapped) and clears it. A doorbell landing between the poll and the clear is merged with the
    one seen, which loses nothing because the caller looks at the queue after `wait` returns.
    """

    POLL_INTERVAL = 0.0005

    def __init__(self, vmm: Vmm) -> None:
        self._vmm = vmm
        self.command = vmm.region("vmfs_command")
        self.completion = vmm.region("vmfs_completion")
        self.data = vmm.region("vmfs_data")
        self.fault = vmm.region("vmfs_fault")

    def signal(self) -> None:
        self._vmm.raise_irq()

    def wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.fault[0]:
                self.fault[0] = 0
                return True
            if self._vmm.process is not None and not self._vmm.alive():
                raise GuestError(f"guest is gone; console:\n{self._vmm.console()[-3000:]}")
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL_INTERVAL)

    def close(self) -> None:
        """The views belong to the Vmm, which releases them in `close`."""


__all__ = ["DRIVER_REAL", "DRIVER_STANDIN", "RAM_BASE", "GuestClientTransport", "GuestError", "Vmm"]
