"""A small arm64 Linux 6.1 for the FS VM, built from Debian's `linux-source-6.1`.

Debian's generic arm64 kernel keeps about 28 MiB of a guest's memory for itself (its image alone
is 33 MB with the init sections), so at 64 MiB the initrd and the driver do not fit beside it.
LionsOS's example boots its own minimal 6.1 instead. This kernel is built the same way: Kconfig's
`allnoconfig` plus only the options below (io_uring, UIO, virtio-blk, vfat, the PL011 console,
the initrd), everything built in, no modules and no network. The result is cached in the guest
cache under `kernel-small/`, keyed by the source package, the options and the cross compiler.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from vmfs.guest.build import BuildError, _Stamp, run

log = logging.getLogger("vmfs.guest.kernel")

# Kconfig lines merged into `allnoconfig`. Options that are on by default without CONFIG_EXPERT
# (futex, epoll, eventfd, signalfd, shmem, /proc/PID/smaps, ...) need no line here.
KERNEL_OPTIONS = (
    'CONFIG_LOCALVERSION="-vmfs"',
    'CONFIG_DEFAULT_HOSTNAME="vmfs"',
    "CONFIG_CC_OPTIMIZE_FOR_SIZE=y",
    "CONFIG_NO_HZ_IDLE=y",
    "CONFIG_HIGH_RES_TIMERS=y",
    "CONFIG_NR_CPUS=2",
    "CONFIG_PRINTK_TIME=y",
    "CONFIG_BLK_DEV_INITRD=y",
    "CONFIG_RD_GZIP=y",
    "CONFIG_BINFMT_ELF=y",
    "CONFIG_BINFMT_SCRIPT=y",
    "CONFIG_IO_URING=y",
    "CONFIG_AIO=y",
    "CONFIG_DEVTMPFS=y",
    "CONFIG_PROC_FS=y",
    "CONFIG_PROC_SYSCTL=y",
    "CONFIG_SYSFS=y",
    "CONFIG_TMPFS=y",
    "CONFIG_TTY=y",
    "CONFIG_SERIAL_AMBA_PL011=y",
    "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y",
    "CONFIG_BLOCK=y",
    "CONFIG_BLK_DEV=y",
    "CONFIG_BLK_DEV_LOOP=y",
    "CONFIG_VIRTIO_MENU=y",
    "CONFIG_VIRTIO_MMIO=y",
    "CONFIG_VIRTIO_BLK=y",
    "CONFIG_UIO=y",
    "CONFIG_UIO_PDRV_GENIRQ=y",
    "CONFIG_VFAT_FS=y",
    "CONFIG_FAT_DEFAULT_CODEPAGE=437",
    'CONFIG_FAT_DEFAULT_IOCHARSET="iso8859-1"',
    "CONFIG_NLS=y",
    "CONFIG_NLS_CODEPAGE_437=y",
    "CONFIG_NLS_ISO8859_1=y",
    "CONFIG_NLS_ASCII=y",
    "CONFIG_NLS_UTF8=y",
)
# Fixed build metadata, so that two builds of the same inputs give the same Image.
REPRODUCIBLE_ENV = {
    "ARCH": "arm64",
    "CROSS_COMPILE": "aarch64-linux-gnu-",
    "KBUILD_BUILD_TIMESTAMP": "1970-01-01",
    "KBUILD_BUILD_USER": "vmfs",
    "KBUILD_BUILD_HOST": "vmfs",
    "KBUILD_BUILD_VERSION": "1",
}


def kernel_source() -> Path:
    """The tarball Debian's linux-source-6.1 package installs."""
    sources = sorted(Path("/usr/src").glob("linux-source-6.1*.tar.xz"))
    if not sources:
        raise BuildError("linux-source-6.1 is not installed (/usr/src/linux-source-6.1.tar.xz)")
    return sources[-1]


def missing_options(config_text: str) -> list[str]:
    """The requested options that Kconfig dropped (an unmet dependency)."""
    have = set(config_text.splitlines())
    return [line for line in KERNEL_OPTIONS if line not in have]


def build_small_kernel(cache: Path) -> Path:
    """Cross-build (or reuse) the small kernel; its `Image` path. Takes minutes the first time."""
    out_dir = cache / "kernel-small"
    image = out_dir / "Image"
    source = kernel_source()
    compiler = run(["aarch64-linux-gnu-gcc", "-dumpfullversion"]).stdout.strip()
    options = "\n".join(KERNEL_OPTIONS) + "\n"
    key = (
        f"small kernel {source.name} {source.stat().st_size} gcc {compiler} "
        f"{hashlib.sha256(options.encode()).hexdigest()}"
    )
    stamp = _Stamp(cache / ".stamp-kernel-small", key)
    if image.exists() and stamp.fresh():
        return image
    stamp.path.unlink(missing_ok=True)
    started = time.monotonic()
    # Fixed paths (not a temporary name), so the build directory leaves no trace in the Image.
    work = out_dir / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        log.info("building the small kernel from %s (minutes)", source.name)
        run(["tar", "-xJf", str(source), "-C", str(work)])
        tree = work / source.name.removesuffix(".tar.xz")
        objects = work / "out"
        fragment = work / "vmfs.config"
        fragment.write_text(options)
        env = dict(os.environ, **REPRODUCIBLE_ENV, KCONFIG_ALLCONFIG=str(fragment))
        make = ["make", "-C", str(tree), f"O={objects}"]
        run([*make, "allnoconfig"], env=env)
        config = (objects / ".config").read_text()
        dropped = missing_options(config)
        if dropped:
            raise BuildError(f"the kernel configuration lost {', '.join(dropped)}")
        run([*make, f"-j{os.cpu_count() or 1}", "Image"], env=env)
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(objects / "arch/arm64/boot/Image", image)
        (out_dir / "config").write_text(config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp.mark()
    log.info("small kernel built in %.0f s: %s", time.monotonic() - started, image)
    return image
