"""Build (once, then from cache) everything the arm64 guest needs, from Debian packages.

Every step writes its output under the cache directory (env VMFS_GUEST_CACHE, default
/var/cache/vmfs/guest: one per machine, so every checkout and CI run on it shares one build; a
fresh machine builds from scratch) and a stamp naming the inputs it was
made from, so a second run does nothing and a changed input (kernel ABI, the cffi source) rebuilds
only the step that depends on it. Nothing is installed into the host system except the Debian
tools listed in HOST_PACKAGES; arm64 packages are downloaded and extracted, never installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vmfs.errors import VmfsError
from vmfs.guest import default_cache

log = logging.getLogger("vmfs.guest.build")

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"

HOST_PACKAGES = (
    "qemu-system-arm", "debootstrap", "device-tree-compiler", "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross", "linux-source-6.1", "linux-kbuild-6.1", "mtools", "dosfstools",
    "fdisk", "cpio", "xz-utils", "kmod", "make",
    "flex", "bison", "bc",  # the small kernel (kernel.py): Kconfig's parser, timeconst
)  # fmt: skip
# Runtime of vmfs in the guest: python3, liburing and cffi's C backend for arm64; the pure-Python
# dependencies and vmfs itself are staged per boot (see vmm.stage_python).
ROOTFS_PACKAGES = (
    "python3", "kmod", "util-linux", "mount", "procps", "dosfstools", "liburing2",
    "python3-cffi-backend",
)  # fmt: skip
SYSROOT_PACKAGES = ("libpython3.11-dev", "liburing-dev", "liburing2")
INITRAMFS_MODULES = ("virtio_mmio", "9pnet_virtio", "9p", "overlay")


class BuildError(VmfsError):
    """A build step failed; the message says which and why."""


@dataclass(frozen=True)
class GuestImage:
    """Paths of a built guest: what `vmm.Vmm` needs to boot it."""

    cache: str
    kernel_release: str
    kernel: str
    initramfs: str
    rootfs: str
    native_ext: str
    busybox: str

    @classmethod
    def load(cls, cache: Path) -> GuestImage:
        return cls(**json.loads((cache / "image.json").read_text()))


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a tool; on failure raise BuildError carrying its stderr, not a bare traceback."""
    log.debug("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise BuildError(
            f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return proc


class _Stamp:
    """A stamp file holds the key a step's output was built from."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key

    def fresh(self) -> bool:
        return self.path.exists() and self.path.read_text() == self.key

    def mark(self) -> None:
        self.path.write_text(self.key)


def ensure_host_packages() -> None:
    """Install the Debian tools the build and the VMM need, and enable arm64 downloads."""
    updated = False
    if "arm64" not in run(["dpkg", "--print-foreign-architectures"]).stdout.split():
        run(["dpkg", "--add-architecture", "arm64"])
        run(["apt-get", "update", "-qq"])
        updated = True
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\n", *HOST_PACKAGES],
        text=True,
        capture_output=True,
    ).stdout
    installed = {line.split()[0] for line in status.splitlines() if "ok installed" in line}
    missing = [p for p in HOST_PACKAGES if p not in installed]
    if not missing:
        return
    log.info("installing host packages: %s", " ".join(missing))
    if not updated:
        run(["apt-get", "update", "-qq"])
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def kernel_release(cache: Path) -> str:
    """The ABI Debian's arm64 kernel metapackage points at, e.g. 6.1.0-56-arm64.

    Resolved once and remembered in the cache (asking apt takes seconds), so a cached image
    keeps its kernel until the cache is removed or VMFS_GUEST_KERNEL names another.
    """
    if os.environ.get("VMFS_GUEST_KERNEL"):
        return os.environ["VMFS_GUEST_KERNEL"]
    remembered = cache / "kernel-release"
    if remembered.exists():
        return remembered.read_text().strip()
    out = run(["apt-cache", "depends", "linux-image-arm64:arm64"]).stdout
    for line in out.splitlines():
        word = line.split(":", 1)[-1].strip()
        if line.strip().startswith("Depends:") and word.startswith("linux-image-6.1"):
            release = word.removeprefix("linux-image-").split(":")[0]
            remembered.write_text(release + "\n")
            return release
    raise BuildError(f"cannot find the arm64 kernel ABI in: {out}")


def download(debs: Path, packages: list[str]) -> list[Path]:
    """`apt-get download` what is not in `debs` yet; return the .deb of each package."""
    debs.mkdir(parents=True, exist_ok=True)

    def find(pkg: str) -> Path | None:
        name, _, arch = pkg.partition(":")
        hits = sorted(debs.glob(f"{name}_*_{arch or '*'}.deb"))
        return hits[-1] if hits else None

    missing = [p for p in packages if find(p) is None]
    if missing:
        log.info("downloading %s", " ".join(missing))
        run(["apt-get", "download", "-qq", *missing], cwd=debs)
    found = [find(p) for p in packages]
    return [f for f in found if f is not None]


def extract(debs: list[Path], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(into)])


def build_rootfs(cache: Path, release: str) -> Path:
    """debootstrap --foreign (download + unpack, no second stage), then unpack every .deb."""
    rootfs = cache / "rootfs"
    stamp = _Stamp(cache / ".stamp-rootfs", f"rootfs {SUITE} {' '.join(ROOTFS_PACKAGES)} {release}")
    if stamp.fresh() and (rootfs / "usr/bin/python3").exists():
        return rootfs
    stamp.path.unlink(missing_ok=True)
    shutil.rmtree(rootfs, ignore_errors=True)
    log.info("debootstrap arm64 rootfs (about a minute)")
    run([
        "debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
        f"--include={','.join(ROOTFS_PACKAGES)}", SUITE, str(rootfs), MIRROR,
    ])  # fmt: skip
    extract(sorted((rootfs / "var/cache/apt/archives").glob("*.deb")), rootfs)
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    proc = rootfs / "proc"
    if proc.is_symlink():  # debootstrap inside a container links it to the host's /proc
        proc.unlink()
    for d in ("proc", "sys", "dev", "mnt", "run", "tmp", "vmfs-run"):
        (rootfs / d).mkdir(exist_ok=True)
    kdebs = download(cache / "debs", [f"linux-image-{release}:arm64"])
    extract(kdebs, rootfs)
    pyver = guest_python(rootfs)
    precompile(
        [rootfs / f"usr/lib/python{pyver}", rootfs / "usr/lib/python3/dist-packages"],
        rootfs,
        pyver,
    )
    stamp.mark()
    return rootfs


def guest_python(rootfs: Path) -> str:
    """The guest's Python minor version, e.g. "3.11"."""
    return os.readlink(rootfs / "usr/bin/python3").removeprefix("python")


def precompile(targets: list[Path], strip: Path, version: str, prefix: str = "/") -> None:
    """Byte-compile Python sources on the host: the .deb postinst that would do it never runs,
    and compiling under TCG costs seconds at every boot. Only done when the host's Python has
    the guest's bytecode format (same minor version). Recorded paths are the guest's: `strip`
    is replaced by `prefix`."""
    if version != f"{sys.version_info.major}.{sys.version_info.minor}":
        log.warning("host Python is not %s: guest Python will start slowly", version)
        return
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j0", "-s", str(strip), "-p", prefix,
         *(str(t) for t in targets if t.exists())],
        check=False,
        capture_output=True,
    )  # fmt: skip


def build_uio_module(cache: Path, rootfs: Path, release: str) -> Path:
    """Cross-build Debian's unmodified uio_pdrv_genirq.c (not enabled in its kernel)."""
    extra = rootfs / "lib/modules" / release / "extra"
    ko = extra / "uio_pdrv_genirq.ko"
    stamp = _Stamp(cache / ".stamp-uio", f"uio {release}")
    if extra.exists() and ko.exists() and stamp.fresh():
        return ko
    common = release.rsplit("-", 1)[0] + "-common"
    hdr = cache / "headers"
    debs = download(
        cache / "debs",
        [f"linux-headers-{release}:arm64", f"linux-headers-{common}", "linux-kbuild-6.1:amd64"],
    )
    shutil.rmtree(hdr, ignore_errors=True)
    extract(debs, hdr)
    kdir = hdr / "usr/src" / f"linux-headers-{release}"
    # The flavour's Makefile includes the common one by absolute path; point it at our copy.
    makefile = kdir / "Makefile"
    makefile.write_text(makefile.read_text().replace("/usr/src/", f"{hdr}/usr/src/"))
    work = Path(tempfile.mkdtemp(prefix="vmfs-uio-"))
    try:
        sources = sorted(Path("/usr/src").glob("linux-source-6.1*.tar.xz"))
        if not sources:
            raise BuildError("linux-source-6.1 is not installed (/usr/src/linux-source-6.1.tar.xz)")
        member = f"{sources[-1].name.removesuffix('.tar.xz')}/drivers/uio/uio_pdrv_genirq.c"
        run(["tar", "-xJf", str(sources[-1]), "--occurrence=1", "-C", str(work), member])
        shutil.move(str(work / member), work / "uio_pdrv_genirq.c")
        (work / "Makefile").write_text("obj-m := uio_pdrv_genirq.o\n")
        run([
            "make", "-C", str(kdir), f"M={work}",
            "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", "modules",
        ])  # fmt: skip
        extra.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "uio_pdrv_genirq.ko", ko)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run(["depmod", "-b", str(rootfs), release])
    stamp.mark()
    return ko


def get_busybox(cache: Path) -> Path:
    target = cache / "busybox"
    if not target.exists():
        tmp = cache / "busybox-deb"
        extract(download(cache / "debs", ["busybox-static:arm64"]), tmp)
        shutil.copy(tmp / "bin/busybox", target)
        shutil.rmtree(tmp)
    return target


def _module_closure(moddir: Path, names: tuple[str, ...]) -> list[str]:
    """Relative .ko paths for `names` and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for dep in deps[path]:
            visit(dep)
        if path not in order:
            order.append(path)

    for name in names:
        if name in by_name:  # built-in modules have no entry, which is fine
            visit(by_name[name])
    return order


INIT = """#!/bin/busybox sh
# Initramfs: read-only rootfs over 9p with a tmpfs overlay (each boot is clean), then the
# per-boot init from the run directory the host shares.
/bin/busybox mkdir -p /proc /sys /dev /lower /upper /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in {modules}; do /bin/busybox insmod /modules/$m; done
p9="-t 9p -o trans=virtio,version=9p2000.L,msize=262144"
/bin/busybox mount $p9,ro,cache=loose rootfs /lower || exec /bin/busybox sh
/bin/busybox mount -t tmpfs -o size=256m tmpfs /upper
/bin/busybox mkdir -p /upper/rw /upper/work
/bin/busybox mount -t overlay -o lowerdir=/lower,upperdir=/upper/rw,workdir=/upper/work \\
    overlay /newroot
/bin/busybox mount $p9 vmfsrun /newroot/vmfs-run
for d in proc sys dev; do /bin/busybox mount --move /$d /newroot/$d; done
exec /bin/busybox switch_root /newroot /bin/sh /vmfs-run/init.sh
"""


def build_initramfs(cache: Path, rootfs: Path, release: str, busybox: Path) -> Path:
    out = cache / "initramfs.cpio.gz"
    stamp = _Stamp(
        cache / ".stamp-initramfs", f"{release} {hashlib.sha256(INIT.encode()).hexdigest()}"
    )
    if out.exists() and stamp.fresh():
        return out
    moddir = rootfs / "lib/modules" / release
    mods = _module_closure(moddir, INITRAMFS_MODULES)
    work = Path(tempfile.mkdtemp(prefix="vmfs-initramfs-"))
    try:
        (work / "bin").mkdir()
        (work / "modules").mkdir()
        shutil.copy(busybox, work / "bin/busybox")
        for rel in mods:
            shutil.copy(moddir / rel, work / "modules" / Path(rel).name)
        names = " ".join(Path(rel).name for rel in mods)
        (work / "init").write_text(INIT.format(modules=names))
        (work / "init").chmod(0o755)
        files = subprocess.run(["find", "."], cwd=work, capture_output=True, check=True).stdout
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=work, input=files, capture_output=True
        )
        if cpio.returncode != 0:
            raise BuildError(f"cpio failed: {cpio.stderr.decode()}")
        gz = subprocess.run(["gzip", "-9"], input=cpio.stdout, capture_output=True, check=True)
        out.write_bytes(gz.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp.mark()
    return out


def build_native(cache: Path, rootfs: Path) -> Path:
    """Cross-compile vmfs._native for the guest's Python against arm64 liburing headers."""
    from vmfs._native_build import ffibuilder

    pyver = guest_python(rootfs)
    with tempfile.TemporaryDirectory(prefix="vmfs-native-") as tmp:
        csrc = Path(tmp) / "_native.c"
        with contextlib.redirect_stdout(io.StringIO()):  # cffi announces every file it writes
            ffibuilder.emit_c_code(str(csrc))
        digest = hashlib.sha256(csrc.read_bytes() + pyver.encode()).hexdigest()[:16]
        suffix = f".cpython-{pyver.replace('.', '')}-aarch64-linux-gnu.so"
        out = cache / "native" / digest / f"_native{suffix}"
        if out.exists():
            return out
        sysroot = cache / "sysroot"
        pkgs = [f"{p.replace('3.11', pyver)}:arm64" for p in SYSROOT_PACKAGES]
        extract(download(cache / "debs", pkgs), sysroot)
        inc = sysroot / "usr/include"
        out.parent.mkdir(parents=True, exist_ok=True)
        run([
            "aarch64-linux-gnu-gcc", "-shared", "-fPIC", "-O2", "-Wno-unused",
            f"-I{inc / f'python{pyver}'}", f"-isystem{inc}", str(csrc),
            f"-L{sysroot / 'usr/lib/aarch64-linux-gnu'}", "-luring", "-o", str(out),
        ])  # fmt: skip
        return out


def build(cache: Path | None = None, install_packages: bool = True) -> GuestImage:
    """Build whatever is missing and return the image description; cheap when cached."""
    cache = cache or default_cache()
    started = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    if install_packages:
        ensure_host_packages()
    release = kernel_release(cache)
    rootfs = build_rootfs(cache, release)
    build_uio_module(cache, rootfs, release)
    busybox = get_busybox(cache)
    bb_in_root = rootfs / "usr/local/bin/busybox"
    if not bb_in_root.exists():
        bb_in_root.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(busybox, bb_in_root)
    image = GuestImage(
        cache=str(cache),
        kernel_release=release,
        kernel=str(rootfs / "boot" / f"vmlinuz-{release}"),
        initramfs=str(build_initramfs(cache, rootfs, release, busybox)),
        rootfs=str(rootfs),
        native_ext=str(build_native(cache, rootfs)),
        busybox=str(bb_in_root),
    )
    (cache / "image.json").write_text(json.dumps(asdict(image), indent=2))
    log.info("guest image ready in %.1f s (%s)", time.monotonic() - started, cache)
    return image


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build(), file=sys.stderr)
