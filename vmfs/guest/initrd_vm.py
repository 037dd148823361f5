"""Boot the arm64 kernel with only the `vmfs guest image` initrd, as LionsOS's FS VM does.

No 9p, no overlay, no network, one vCPU. The guest's memory is `mem=<N>M` at 0x40000000 (128 MiB
in the LionsOS example); the five vmfs regions lie above it, outside the guest's memory as the
example's UIO regions do (QEMU's RAM file is larger only to hold them, so the host maps the same
bytes). The initrd is loaded where the example loads it (0x47000000 for 128 MiB) and announced
in the DTB's /chosen, not by `-initrd`. The serial console is a socket: the harness reads
everything the guest prints and types into the console shell the initrd's init starts.
"""

from __future__ import annotations

import mmap
import os
import re
import shlex
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from vmfs.guest import CARVEOUT, COMMAND_SPI, RAM_BASE, REGIONS, Region
from vmfs.guest.build import GuestImage
from vmfs.guest.qemu import Qmp, Qtest, connect_unix, make_dtb, vmfs_nodes
from vmfs.guest.vmm import QEMU, GuestClientTransport, GuestError
from vmfs.uio import CONFIG_SIZE, RegionSizes

MIB = 1024 * 1024
DONE = re.compile(rb"@@rc=(\d+)@@")
# Debian's kernel reserves 64 MiB of CMA, which the initramfs (ramfs pages) cannot use; and at boot
# its 6.1 tracefs gives every trace event a dentry and inode (about 8 MB of slab, never freed).
# Neither is needed to serve, and at 64 MiB the second decides whether the initrd unpacks.
LEAN_KERNEL = "cma=0 initcall_blacklist=tracer_init_tracefs"


REGION_ROOM_MIB = 72  # the 65 MiB of vmfs regions, rounded up
DTB_ROOM_MIB = 2  # QEMU aligns the DTB to 2 MiB, as early arm64 kernels map it


def qemu_dtb_mib(qemu_mib: int) -> int:
    """MiB above RAM_BASE where QEMU's direct kernel boot puts the DTB when there is no
    `-initrd` (hw/arm/boot.c): halfway into its RAM, at most 128 MiB in, 2 MiB aligned. (It
    would go higher only for a kernel image ending above that; both kernels here end far below.)"""
    half = min(qemu_mib * MIB // 2, 128 * MIB)
    return -(-half // (DTB_ROOM_MIB * MIB)) * DTB_ROOM_MIB


def regions_offset_mib(guest_mib: int) -> int:
    """MiB above RAM_BASE where the vmfs regions start: right above the guest's memory, or higher
    when QEMU's DTB would land on them (guests of 76 MiB and less), which leaves the DTB in the
    gap between the guest's memory and the regions (the kernel reads it there, as at any
    address, and copies it at boot)."""
    base = guest_mib
    while qemu_dtb_mib(base + REGION_ROOM_MIB) + DTB_ROOM_MIB > base:
        base += DTB_ROOM_MIB
    return base


def regions_above(guest_mib: int) -> tuple[dict[str, Region], Region]:
    """The vmfs regions, laid out as in the 1 GiB harness but above the guest's memory, clear of
    QEMU's DTB; and the span they cover."""
    base = RAM_BASE + regions_offset_mib(guest_mib) * MIB
    moved = {
        r.name: Region(r.name, base + r.phys - CARVEOUT.phys, r.size) for r in REGIONS.values()
    }
    return moved, Region("vmfs_shared", base, CARVEOUT.size)


def initrd_address(guest_mib: int) -> int:
    """0x47000000 at 128 MiB (the example's); 16 MiB below the top of memory in general."""
    return RAM_BASE + guest_mib * MIB - 16 * MIB


class ConsoleShell:
    """The guest's serial console: a reader thread keeps everything; `run` types a command."""

    def __init__(self, path: Path, log_path: Path) -> None:
        self._sock = connect_unix(path)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.buffer = bytearray()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self.buffer += b"\n[console closed]\n"
                    self._cond.notify_all()
                    return
                self.buffer += chunk
                self._log.write(chunk)
                self._log.flush()
                self._cond.notify_all()

    def wait_for(self, pattern: bytes, timeout: float, start: int = 0) -> re.Match[bytes]:
        """The first match of `pattern` in the console output after offset `start`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = regex.search(self.buffer, start)
                if found:
                    return found
                if self.buffer.endswith(b"[console closed]\n"):
                    raise GuestError(f"console closed waiting for {pattern!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = self.buffer[-3000:].decode(errors="replace")
                    raise GuestError(f"timed out waiting for {pattern!r}; console:\n{tail}")
                self._cond.wait(left)

    def send(self, line: str) -> None:
        self._sock.sendall(line.encode() + b"\n")

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run one shell command line in the console shell; (status, output)."""
        with self._cond:
            start = len(self.buffer)
        # The marker is built by printf, so the echoed command line does not match it.
        self.send(f"{command}; printf '\\100\\100rc=%d\\100\\100\\n' $?")
        done = self.wait_for(DONE.pattern, timeout, start)
        text = self.buffer[start : done.start()].decode(errors="replace")
        lines = [ln for ln in text.splitlines() if "\\100\\100rc=" not in ln]  # echoes
        return int(done.group(1)), "\n".join(lines)

    def close(self) -> None:
        self._sock.close()
        self._reader.join(5)
        self._log.close()


class InitrdVm:
    """One boot of kernel + initrd (+ a disk as /dev/vda); `client_transport()` as in `Vmm`."""

    def __init__(
        self,
        image: GuestImage,
        initrd: Path,
        disk: Path | None = None,
        guest_mib: int = 128,
        extra_append: str = "",
        kernel: Path | None = None,
    ) -> None:
        self.image = image
        self.kernel = str(kernel) if kernel is not None else image.kernel
        self.initrd = initrd
        self.disk = disk
        self.guest_mib = guest_mib
        self.qemu_mib = regions_offset_mib(guest_mib) + REGION_ROOM_MIB
        self.extra_append = extra_append
        self.regions, self.span = regions_above(guest_mib)
        self.run_dir = Path(tempfile.mkdtemp(prefix="vmfs-initrd-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self.qtest: Qtest | None = None
        self.shell: ConsoleShell | None = None
        self.gic = ""
        self.started_at = 0.0
        fd, name = tempfile.mkstemp(prefix="vmfs-ram-", dir="/dev/shm")
        self.ram_path = Path(name)
        os.ftruncate(fd, self.qemu_mib * MIB)
        try:
            self._map = mmap.mmap(fd, self.span.size, offset=self.span.phys - RAM_BASE)
        finally:
            os.close(fd)
        whole = memoryview(self._map)
        self._views = {
            r.name: whole[r.phys - self.span.phys : r.phys - self.span.phys + r.size]
            for r in self.regions.values()
        }
        order = ("vmfs_command", "vmfs_completion", "vmfs_data", "vmfs_fault")
        sizes = RegionSizes(*(self.regions[n].size for n in order))
        self._views["vmfs_config"][:CONFIG_SIZE] = sizes.to_config()

    # ---- what GuestClientTransport uses ---------------------------------------------------

    def region(self, name: str) -> memoryview:
        return self._views[name]

    def raise_irq(self) -> None:
        if self.qtest is not None:
            self.qtest.pulse(self.gic, COMMAND_SPI)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def console(self) -> str:
        try:
            return (self.run_dir / "console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client_transport(self) -> GuestClientTransport:
        return GuestClientTransport(self)  # type: ignore[arg-type]

    # ---- boot -------------------------------------------------------------------------

    def machine_args(self) -> list[str]:
        """The machine the guest boots on; the DTB is dumped from exactly these options."""
        return ["-M", "virt,memory-backend=ram0", "-accel", "tcg", "-cpu", "cortex-a72",
                "-smp", "1", "-m", f"{self.qemu_mib}M", "-nic", "none",
                "-object", f"memory-backend-file,id=ram0,size={self.qemu_mib}M,"
                           f"mem-path={self.ram_path},share=on"]  # fmt: skip

    def dtb_fragment(self) -> str:
        start = initrd_address(self.guest_mib)
        end = start + self.initrd.stat().st_size
        chosen = (
            f"/ {{ chosen {{ linux,initrd-start = <0x{start:x}>; "
            f"linux,initrd-end = <0x{end:x}>; }}; }};\n"
        )
        return vmfs_nodes(self.regions, carveout=None) + chosen

    def qemu_command(self) -> list[str]:
        args = self.machine_args()
        dtb = make_dtb(QEMU, args, self.run_dir, self.dtb_fragment())
        run = self.run_dir
        append = (f"console=ttyAMA0 panic=-1 loglevel=4 mem={self.guest_mib}M {LEAN_KERNEL} "
                  f"uio_pdrv_genirq.of_id=generic-uio {self.extra_append}").strip()  # fmt: skip
        args += [
            "-kernel", self.kernel, "-dtb", str(dtb), "-append", append,
            "-device", f"loader,file={self.initrd},addr=0x{initrd_address(self.guest_mib):x},"
                       "force-raw=on",
            "-no-reboot", "-display", "none", "-monitor", "none",
            "-chardev", f"socket,id=con0,path={run / 'console.sock'},server=on,wait=off",
            "-serial", "chardev:con0",
            "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
            "-qtest", f"unix:{run / 'qtest.sock'},server=on,wait=off",
        ]  # fmt: skip
        if self.disk is not None:
            from vmfs.guest.disk import first_partition

            offset, size = first_partition(self.disk)
            args += ["-blockdev", f"driver=raw,node-name=disk0,file.driver=file,"
                     f"file.filename={self.disk},offset={offset},size={size}",
                     "-device", "virtio-blk-device,drive=disk0"]  # fmt: skip
        return [QEMU, *args]

    def start(self) -> None:
        cmd = self.qemu_command()
        (self.run_dir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
        self.started_at = time.monotonic()
        with open(self.run_dir / "qemu.log", "wb") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.shell = ConsoleShell(self.run_dir / "console.sock", self.run_dir / "console.log")
        self.qmp = Qmp(self.run_dir / "qmp.sock")
        self.qtest = Qtest(self.run_dir / "qtest.sock")
        self.gic = self.qmp.find_gic()

    def wait_shell(self, timeout: float = 180.0) -> float:
        """Wait until rcS has run and the console shell answers; seconds since QEMU started."""
        assert self.shell is not None
        self.shell.wait_for(rb"rcS: up at", timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.shell.run("stty -echo", timeout=5)
                return time.monotonic() - self.started_at
            except GuestError:
                if time.monotonic() > deadline or not self.alive():
                    raise

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        assert self.shell is not None
        return self.shell.run(command, timeout)

    def poweroff(self, timeout: float = 60.0) -> None:
        """BusyBox init's orderly power-off (TERM to fs_driver_init, unmount); QEMU exits."""
        if self.alive() and self.shell is not None:
            self.shell.send("poweroff")
            try:
                assert self.process is not None
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        try:
            self.poweroff()
        except OSError:  # the console is already gone
            pass
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for conn in (self.qmp, self.qtest, self.shell):
            if conn is not None:
                conn.close()
        self.qmp = self.qtest = self.shell = None
        for view in self._views.values():
            view.release()
        self._views.clear()
        self._map.close()
        self.ram_path.unlink(missing_ok=True)

    def __enter__(self) -> InitrdVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
