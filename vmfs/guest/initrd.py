"""`vmfs guest image`: one self-contained arm64 initrd for the LionsOS file-system VM.

Everything comes from Debian 12 arm64 packages (downloaded, unpacked, never installed) plus this
checkout's vmfs and the host's construct/transitions (the versions the tests run):

- BusyBox (glibc) as /init with an rcS that mounts /proc, /sys, /dev, /run, loads the kernel
  modules built for the harness kernel when that kernel runs, and starts
  /etc/init.d/S99fs_driver_init (the repository's fs_driver_init, where LionsOS's
  `packrootfs --startup` puts it); a shell on the console.
- python3.11 and only the standard-library modules a serving driver imports (measured by
  `probe.probe_imports`), byte-compiled (-OO, sourceless, hash-based so no mtime matters);
  vmfs without its tooling, its arm64 `_native` extension, `_cffi_backend`; the shared libraries
  all of that needs (from the ELF DT_NEEDED entries), stripped.

The archive is written by `cpio.archive` (fixed owners, mtimes, order) and compressed with a fixed
header, so two builds from the same inputs give the same bytes.
"""

from __future__ import annotations

import _imp
import gzip
import hashlib
import io
import logging
import lzma
import os
import py_compile
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vmfs.errors import VmfsError
from vmfs.guest import cpio, default_cache
from vmfs.guest.build import _module_closure, _Stamp, build, download, extract, run
from vmfs.guest.probe import (
    NOT_SERVED,
    SOURCE_ROOT,
    THIRD_PARTY,
    _dependency_paths,
    probe_imports,
)
from vmfs.resources import resource_path

log = logging.getLogger("vmfs.guest.initrd")

PY = "python3.11"
PACKAGES = (
    "busybox", "libc6", "libexpat1", "zlib1g", f"{PY}-minimal", f"lib{PY}-minimal",
    f"lib{PY}-stdlib", "libffi8", "liburing2", "python3-cffi-backend",
)  # fmt: skip
# Imported by the probe but optional: the importer catches ImportError, and shipping them would
# bring OpenSSL (4 MB), libbz2 and liblzma. hashlib falls back to the built-in _blake2/_sha256;
# _compression serves only bz2 and lzma.
OPTIONAL_MODULES = ("_hashlib", "_ssl", "bz2", "_bz2", "lzma", "_lzma", "_compression")
# Debian's kernel builds these as modules; the LionsOS kernel has them built in (and the rcS
# loads them only when the running kernel is the one they were built for).
KERNEL_MODULES = {
    "virtio_mmio": "", "virtio_blk": "", "uio_pdrv_genirq": "of_id=generic-uio", "vfat": "",
    "nls_cp437": "", "nls_ascii": "", "nls_utf8": "",
}  # fmt: skip
APPLETS = (
    "sh", "ash", "awk", "cat", "cut", "date", "dmesg", "echo", "free", "grep", "insmod", "kill",
    "ls", "lsmod", "mkdir", "mount", "pidof", "poweroff", "ps", "reboot", "rm", "sleep", "stty",
    "sync", "top", "umount", "uname",
)  # fmt: skip
LIB_DIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu")
STDLIB = f"usr/lib/{PY}"
ZIP_PATH = "usr/lib/python311.zip"  # on Python's default sys.path, ahead of STDLIB
DYNLOAD_SUFFIX = ".cpython-311-aarch64-linux-gnu.so"

INITTAB = """\
# BusyBox init: rcS once, then a shell on the console (respawned).
::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/umount -a -r
"""
RCS = """\
#!/bin/sh
# Mount the kernel file systems, load the modules built for this kernel (if it is that kernel),
# then start every /etc/init.d/S??* with "start", as Buildroot's rcS does.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
modules=/lib/modules/$(uname -r)
if [ -f "$modules/load" ]; then
    while read -r ko args; do
        insmod "$modules/$ko" $args || echo "rcS: insmod $ko failed" >&2
    done <"$modules/load"
fi
echo "rcS: up at $(cut -d' ' -f1 /proc/uptime) s"
for script in /etc/init.d/S??*; do
    [ -x "$script" ] && "$script" start
done
"""
LAUNCHER = f"""\
#!/bin/sh
# vmfs without site (nothing but the standard library path is searched).
exec /usr/bin/{PY} -S -c 'import sys; sys.argv[0] = "vmfs"; from vmfs.cli import main; \\
sys.exit(main())' "$@"
"""


class InitrdError(VmfsError):
    """The initrd could not be assembled; the message says what is missing."""


@dataclass
class Initrd:
    """What `build_initrd` made, with the numbers the docs report."""

    path: Path
    compressed: int
    unpacked: int
    files: int
    python_modules: int
    digest: str


def _needed(path: Path) -> list[str]:
    out = run(["aarch64-linux-gnu-readelf", "-d", str(path)]).stdout
    return [
        line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line
    ]


def _strip(path: Path, kernel_module: bool = False) -> bytes:
    """A stripped copy's bytes (debug info only for kernel modules: they need their symbols)."""
    with tempfile.TemporaryDirectory(prefix="vmfs-strip-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copy(path, copy)
        flag = "--strip-debug" if kernel_module else "--strip-unneeded"
        run(["aarch64-linux-gnu-strip", flag, "-o", str(copy), str(path)])
        return copy.read_bytes()


def _compile(source: Path, guest_path: str) -> bytes:
    """Sourceless -OO bytecode; unchecked-hash pycs carry no mtime, so builds are reproducible."""
    with tempfile.TemporaryDirectory(prefix="vmfs-pyc-") as tmp:
        out = Path(tmp) / "m.pyc"
        py_compile.compile(
            str(source), cfile=str(out), dfile=guest_path, doraise=True, optimize=2,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )  # fmt: skip
        return out.read_bytes()


def _zip(members: dict[str, bytes]) -> bytes:
    """A deflated zip with fixed dates and order: compressed in RAM too, since an initrd's
    files stay in memory for the life of the guest. zipimport (frozen) and zlib (built in) read
    it before anything else is imported."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name], compresslevel=9)
    return buf.getvalue()


class _Tree:
    """The initrd's entries, keyed by path without a leading slash."""

    def __init__(self) -> None:
        self.entries: dict[str, cpio.Entry] = {}

    def add(self, path: str, entry: cpio.Entry) -> None:
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts)):
            self.entries.setdefault("/".join(parts[:i]), cpio.directory())
        self.entries[path] = entry


class _Builder:
    def __init__(self, cache: Path, zip_stdlib: bool) -> None:
        if sys.version_info[:2] != (3, 11):
            raise InitrdError(
                f"the guest's Python is {PY}; byte-compiling for it needs a host Python 3.11, "
                f"not {sys.version_info.major}.{sys.version_info.minor}"
            )
        self.cache = cache
        self.image = build(cache)
        self.pkgs = cache / "initrd" / "packages"
        self.tree = _Tree()
        self.elves: list[str] = []  # guest paths of ELF files whose libraries must be shipped
        self.zip_stdlib = zip_stdlib
        self.zipped: dict[str, bytes] = {}  # path inside ZIP_PATH -> bytecode

    def unpack_packages(self) -> None:
        debs = download(self.cache / "debs", [f"{p}:arm64" for p in PACKAGES])
        stamp = _Stamp(self.cache / "initrd" / ".stamp-packages", " ".join(d.name for d in debs))
        if not stamp.fresh():
            shutil.rmtree(self.pkgs, ignore_errors=True)
            extract(debs, self.pkgs)
            stamp.mark()

    def add_elf(self, guest: str, host: Path, kernel_module: bool = False) -> None:
        self.tree.add(guest, cpio.file(_strip(host, kernel_module), 0o755))
        if not kernel_module:
            self.elves.append(guest)

    def add_system(self) -> None:
        self.add_elf("bin/busybox", self.pkgs / "bin/busybox")
        for applet in APPLETS:
            self.tree.add(f"bin/{applet}", cpio.symlink("busybox"))
        self.tree.add("init", cpio.symlink("bin/busybox"))
        self.tree.add("sbin/init", cpio.symlink("../bin/busybox"))
        self.tree.add("dev/console", cpio.chardev(5, 1))
        for d in ("proc", "sys", "run", "tmp", "mnt", "root"):
            self.tree.add(d, cpio.directory())
        self.tree.add("tmp", cpio.directory(0o1777))
        self.tree.add("etc/inittab", cpio.file(INITTAB.encode()))
        self.tree.add("etc/init.d/rcS", cpio.file(RCS.encode(), 0o755))
        init = resource_path("fs_driver_init").read_bytes()
        self.tree.add("etc/init.d/S99fs_driver_init", cpio.file(init, 0o755))
        self.tree.add("usr/bin/vmfs", cpio.file(LAUNCHER.encode(), 0o755))

    def add_kernel_modules(self) -> None:
        release = self.image.kernel_release
        moddir = Path(self.image.rootfs) / "lib/modules" / release
        lines = []
        for rel in _module_closure(moddir, tuple(KERNEL_MODULES)):
            name = Path(rel).name
            self.add_elf(f"lib/modules/{release}/{name}", moddir / rel, kernel_module=True)
            args = KERNEL_MODULES.get(name.removesuffix(".ko").replace("-", "_"), "")
            lines.append(f"{name} {args}".rstrip() + "\n")
        self.tree.add(f"lib/modules/{release}/load", cpio.file("".join(lines).encode()))

    def _builtins(self) -> set[str]:
        binary = (self.pkgs / "usr/bin" / PY).read_bytes()
        return {
            word[len(b"PyInit_") :].decode()
            for word in binary.split(b"\0")
            if word.startswith(b"PyInit_") and word[7:].replace(b"_", b"").isalnum()
        }

    def _find_source(self, name: str) -> tuple[Path, str] | None:
        """(host file, guest path) of a pure-Python module, or None."""
        top = name.split(".")[0]
        if top == "vmfs":
            roots = [SOURCE_ROOT]
        elif top in THIRD_PARTY:
            roots = [Path(d) for d in _dependency_paths()]
        else:
            roots = [self.pkgs / STDLIB]
        rel = name.replace(".", "/")
        for root in roots:
            for cand, guest in ((f"{rel}.py", f"{rel}.pyc"),
                                (f"{rel}/__init__.py", f"{rel}/__init__.pyc")):  # fmt: skip
                if (root / cand).is_file():
                    return root / cand, f"{STDLIB}/{guest}"
        return None

    def add_python(self) -> int:
        self.add_elf(f"usr/bin/{PY}", self.pkgs / "usr/bin" / PY)
        self.tree.add("usr/bin/python3", cpio.symlink(PY))
        self.tree.add(f"{STDLIB}/lib-dynload", cpio.directory())
        builtins = self._builtins()
        names = probe_imports()
        names.add("os")  # frozen, but os.pyc is the landmark by which Python finds its stdlib
        shipped = 0
        for name in sorted(names):
            if name in OPTIONAL_MODULES or name in builtins:
                continue
            if _imp.is_frozen(name) and name != "os":  # 3.11 runs these from its own binary
                continue
            if any(name == x or name.startswith(x + ".") for x in NOT_SERVED):
                continue
            if name == "vmfs._native":
                native = Path(self.image.native_ext)
                self.add_elf(f"{STDLIB}/vmfs/{native.name}", native)
                continue
            dynload = self.pkgs / STDLIB / "lib-dynload" / f"{name}{DYNLOAD_SUFFIX}"
            if name == "_cffi_backend":
                dynload = self.pkgs / "usr/lib/python3/dist-packages" / f"{name}{DYNLOAD_SUFFIX}"
            if dynload.exists():
                self.add_elf(f"{STDLIB}/lib-dynload/{dynload.name}", dynload)
                shipped += 1
                continue
            found = self._find_source(name)
            if found is None:
                log.debug("not shipped (frozen, or a failed optional import): %s", name)
                continue
            source, guest = found
            pyc = _compile(source, "/" + guest.removesuffix("c"))
            if self.zip_stdlib and name.split(".")[0] not in ("vmfs", "os"):
                self.zipped[guest.removeprefix(STDLIB + "/")] = pyc
            else:
                self.tree.add(guest, cpio.file(pyc))
            shipped += 1
        if self.zipped:
            self.tree.add(ZIP_PATH, cpio.file(_zip(self.zipped)))
        return shipped

    def add_libraries(self) -> None:
        """The DT_NEEDED closure of every ELF shipped, from the unpacked packages."""
        seen: set[str] = set()
        todo = [self.pkgs / "usr/bin" / PY, self.pkgs / "bin/busybox"]
        todo += [self._host_of(g) for g in self.elves]
        while todo:
            for lib in _needed(todo.pop()):
                if lib in seen:
                    continue
                seen.add(lib)
                for d in LIB_DIRS:
                    host = self.pkgs / d / lib
                    if host.exists():
                        self.add_elf(f"{d}/{lib}", host.resolve())
                        todo.append(host.resolve())
                        break
                else:
                    raise InitrdError(f"no package provides {lib}")
        self.add_interpreter()

    def add_interpreter(self) -> None:
        """The dynamic loader at the path the executables name (PT_INTERP, /lib/ld-linux-...)."""
        out = run(["aarch64-linux-gnu-readelf", "-l", str(self.pkgs / "usr/bin" / PY)]).stdout
        found = re.search(r"Requesting program interpreter: (\S+)\]", out)
        if found is None:
            raise InitrdError(f"{PY} names no program interpreter")
        interp = found[1].strip("/")
        target = self.pkgs / interp
        if not target.is_symlink():
            raise InitrdError(f"{interp} is not the symlink Debian ships")
        self.tree.add(interp, cpio.symlink(os.readlink(target)))

    def _host_of(self, guest: str) -> Path:
        entry = self.tree.entries[guest.strip("/")]
        tmp = self.cache / "initrd" / "elf-scan"
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / hashlib.sha256(entry.data).hexdigest()
        if not path.exists():
            path.write_bytes(entry.data)
        return path


def compress(data: bytes, method: str) -> bytes:
    """gzip (what every kernel and LionsOS's packrootfs read) or xz (CRC32, as the kernel's
    decompressor wants); both with fixed headers, so equal input gives equal output."""
    if method == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if method == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             preset=9 | lzma.PRESET_EXTREME)  # fmt: skip
    raise InitrdError(f"unknown compression {method!r} (gzip or xz)")


def build_initrd(
    out: Path, cache: Path | None = None, compression: str = "gzip", zip_stdlib: bool = True
) -> Initrd:
    """Assemble the initrd and write it to `out`; see the module docstring."""
    b = _Builder(cache or default_cache(), zip_stdlib)
    b.unpack_packages()
    b.add_system()
    b.add_kernel_modules()
    modules = b.add_python()
    b.add_libraries()
    raw = cpio.archive(b.tree.entries)
    packed = compress(raw, compression)
    out.write_bytes(packed)
    files = sum(1 for e in b.tree.entries.values() if stat.S_ISREG(e.mode))
    return Initrd(out, len(packed), len(raw), files, modules, hashlib.sha256(packed).hexdigest())
