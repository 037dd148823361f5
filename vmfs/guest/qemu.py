"""QEMU's control sockets and the guest's device tree.

QMP finds the interrupt controller; qtest injects edges on its input lines (the stand-in for
libvmm's virq injection). The DTB is the one QEMU generates for the same machine, extended with
the five `generic-uio` nodes of the LionsOS vmfs example.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

from vmfs.errors import VmfsError
from vmfs.guest import CARVEOUT, COMMAND_SPI, REGIONS, Region


class QemuError(VmfsError):
    """QEMU refused a request or its control socket broke."""


def connect_unix(path: Path, timeout: float = 10.0) -> socket.socket:
    """Connect to a QEMU server socket, waiting for QEMU to create it."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() > deadline:
                raise QemuError(f"QEMU socket {path} did not appear: {e}") from e
            time.sleep(0.02)


class Qmp:
    """A minimal synchronous QMP client (events are skipped)."""

    def __init__(self, path: Path) -> None:
        self._sock = connect_unix(path)
        self._file = self._sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, object]:
        line = self._file.readline()
        if not line:
            raise QemuError("QMP connection closed")
        return json.loads(line)

    def execute(self, command: str, **arguments: object) -> object:
        msg: dict[str, object] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QemuError(f"QMP {command}: {reply['error']}")

    def find_gic(self) -> str:
        """QOM path of the GIC, whose input lines are the SPIs (NOTES.md Q4)."""
        entries = self.execute("qom-list", path="/machine/unattached")
        assert isinstance(entries, list)
        for entry in entries:
            if entry["type"] in ("child<arm_gic>", "child<arm-gicv3>"):
                return f"/machine/unattached/{entry['name']}"
        raise QemuError("no GIC found under /machine/unattached")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


class Qtest:
    """Line-oriented qtest client; thread-safe because the client signals from any thread."""

    def __init__(self, path: Path) -> None:
        self._sock = connect_unix(path)
        self._file = self._sock.makefile("rwb")
        self._lock = threading.Lock()

    def command(self, line: str) -> str:
        with self._lock:
            self._file.write(line.encode() + b"\n")
            self._file.flush()
            while True:
                reply = self._file.readline().decode()
                if not reply:
                    raise QemuError("qtest connection closed")
                if not reply.startswith("IRQ"):
                    break
        if not reply.startswith("OK"):
            raise QemuError(f"qtest {line!r}: {reply.strip()}")
        return reply

    def pulse(self, gic: str, line: int = COMMAND_SPI) -> None:
        """A rising then falling edge on one GIC input: one edge-triggered interrupt."""
        self.command(f"set_irq_in {gic} unnamed-gpio-in {line} 1")
        self.command(f"set_irq_in {gic} unnamed-gpio-in {line} 0")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def vmfs_nodes(regions: dict[str, Region] = REGIONS, carveout: Region | None = CARVEOUT) -> str:
    """The device-tree fragment: the five generic-uio nodes, and a no-map carve-out when the
    regions lie inside the guest's RAM (`carveout=None` when they lie outside it)."""

    def cells(value: int) -> str:
        return f"0x{value >> 32:x} 0x{value & 0xFFFFFFFF:x}"

    lines = ["/ {"]
    if carveout is not None:
        lines += [
            "  reserved-memory {",
            "    #address-cells = <2>; #size-cells = <2>; ranges;",
            f"    vmfs_shared@{carveout.phys:x} {{ reg = <{cells(carveout.phys)} "
            f"{cells(carveout.size)}>; no-map; }};",
            "  };",
        ]
    for r in regions.values():
        irq = f" interrupts = <0x0 {COMMAND_SPI} 0x1>;" if r.name == "vmfs_command" else ""
        lines.append(
            f'  {r.name}@{r.phys:x} {{ compatible = "generic-uio", "{r.name}"; '
            f"reg = <{cells(r.phys)} {cells(r.size)}>;{irq} }};"
        )
    lines.append("};")
    return "\n".join(lines) + "\n"


def make_dtb(
    qemu: str, machine_args: list[str], directory: Path, fragment: str | None = None
) -> Path:
    """QEMU's own DTB for exactly these machine arguments, with `fragment` appended (default:
    the vmfs nodes).

    Dumped for every boot (tens of milliseconds): it then always matches the machine that boots
    and the installed QEMU, and QEMU's per-boot random seeds in /chosen stay per boot.
    """
    fragment = vmfs_nodes() if fragment is None else fragment
    base = directory / "qemu.dtb"
    out = directory / "vmfs.dtb"
    args = list(machine_args)
    i = args.index("-M") + 1
    args[i] = f"{args[i]},dumpdtb={base}"
    dump = subprocess.run([qemu, *args, "-display", "none"], capture_output=True, text=True)
    if dump.returncode != 0 or not base.exists():
        raise QemuError(f"{qemu} could not dump its device tree: {dump.stderr.strip()}")
    dts = subprocess.run(
        ["dtc", "-q", "-I", "dtb", "-O", "dts", str(base)], check=True, capture_output=True
    ).stdout.decode()
    subprocess.run(
        ["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(out), "-"],
        input=(dts + fragment).encode(),
        check=True,
        capture_output=True,
    )
    return out
