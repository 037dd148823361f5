"""`python -m vmfs.guest {build,demo,run}` (also `vmfs guest ...`): the arm64 guest harness."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vmfs.errors import VmfsError
from vmfs.guest import CACHE_ENV, KERNELS, MACHINE_CACHE, default_cache

DESCRIPTION = (
    "Build and boot a real arm64 Linux guest (QEMU virt under TCG) whose vmfs_* UIO devices "
    "come from device-tree nodes, as on LionsOS; the host is the VMM and the client. The build "
    "cache is VMFS_GUEST_CACHE (default /var/cache/vmfs/guest), shared by every checkout on "
    "the machine. See docs/guest.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The guest actions, shared by `python -m vmfs.guest` and `vmfs guest`."""
    parser.add_argument(
        "--cache",
        type=Path,
        help=f"build cache directory (default: ${CACHE_ENV}, else {MACHINE_CACHE})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every build step")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser(
        "build",
        help="build the guest image (cached, idempotent)",
        description="Install the Debian tools needed, then build whatever the cache lacks: "
        "arm64 kernel and rootfs, uio_pdrv_genirq, initramfs, vmfs's arm64 extension.",
    )
    demo = sub.add_parser(
        "demo",
        help="build, boot, run a client session from the host, check the disk",
        description="Boot the guest with a FAT disk as /dev/vda; its init starts fs_driver_init, "
        "which runs `vmfs serve --uio`. The host queues INITIALISE before boot, runs mkdir, "
        "write, list, read back, rename, remove and a 1 MiB file, DEINITIALISE, powers the "
        "guest off and checks the image with mtools. Exits 0 when everything matched.",
    )
    demo.add_argument(
        "--driver",
        choices=("real", "standin"),
        help="real: fs_driver_init + vmfs serve (default); standin: the echo driver",
    )
    demo.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    demo.add_argument(
        "--initrd",
        action="store_true",
        help="boot only the `vmfs guest image` initrd, as LionsOS's FS VM does (no 9p, no "
        "network, one vCPU, 128 MiB)",
    )
    demo.add_argument(
        "--memory", type=int, default=128, metavar="MIB", help="with --initrd: guest memory"
    )
    demo.add_argument(
        "--kernel",
        choices=KERNELS,
        default="debian",
        help="with --initrd: Debian's generic arm64 kernel (default), or a small one built from "
        "linux-source-6.1 with only what vmfs needs (a 64 MiB guest needs it; built once, "
        "minutes)",
    )
    image = sub.add_parser(
        "image",
        help="build the self-contained initrd for the LionsOS file-system VM",
        description="Build one arm64 initrd (BusyBox, Python with only the modules a serving "
        "driver imports, vmfs, its libraries, fs_driver_init as the startup script) from "
        "Debian packages, reproducibly. See docs/guest-image.md.",
    )
    image.add_argument(
        "-o", "--output", type=Path, default=Path("vmfs-initrd.cpio.gz"), help="output file"
    )
    image.add_argument(
        "--compression", choices=("gzip", "xz"), default="gzip", help="default: gzip"
    )
    image.add_argument(
        "--no-zip",
        action="store_true",
        help="standard library as loose .pyc files instead of a deflated python311.zip "
        "(smaller with xz, 1.5 MB more RAM in the guest)",
    )
    run = sub.add_parser(
        "run",
        help="boot and run one shell command in the guest",
        description="Boot the guest, run SCRIPT with sh inside it, print its output, power off.",
    )
    run.add_argument("script", help="shell command to run in the guest")
    run.add_argument("--disk", type=Path, help="FAT image attached as /dev/vda")


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse a cache that cannot be a directory or a disk that is not there, before any work."""
    cache = args.cache if args.cache is not None else default_cache()
    if cache.exists() and not cache.is_dir():
        raise VmfsError(f"guest: the build cache {cache} exists and is not a directory")
    disk = getattr(args, "disk", None)
    if disk is not None and not disk.is_file():
        raise VmfsError(f"guest: --disk {disk} is not an existing image file")


def run_action(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s"
    )
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    _check_paths(args)
    if args.action == "build":
        from vmfs.guest.build import build

        print(build(args.cache))
        return 0
    if args.action == "image":
        from vmfs.guest.initrd import build_initrd

        made = build_initrd(args.output, args.cache, args.compression, not args.no_zip)
        print(
            f"{made.path}: {made.compressed} bytes {args.compression}, {made.unpacked} unpacked, "
            f"{made.files} files, {made.python_modules} Python modules, sha256 {made.digest}"
        )
        return 0
    if args.action == "demo":
        from vmfs.guest import demo as demo_mod
        from vmfs.guest.vmm import DRIVER_REAL, DRIVER_STANDIN

        if args.initrd:
            from vmfs.guest.initrd_demo import demo_initrd

            return demo_initrd(args.cache, args.keep, args.memory, args.kernel)
        driver = {"standin": DRIVER_STANDIN, "real": DRIVER_REAL, None: demo_mod.DEMO_DRIVER}
        return demo_mod.demo(driver[args.driver], args.cache, args.keep)
    from vmfs.guest.build import build
    from vmfs.guest.vmm import Vmm

    with Vmm(build(args.cache), command="sleep infinity", disk=args.disk) as vmm:
        vmm.prepare()
        vmm.start()
        vmm.wait_ready()
        status, output = vmm.exec(args.script, timeout=600)
        sys.stdout.write(output)
        return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmfs.guest", description=DESCRIPTION)
    add_arguments(parser)
    return run_action(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
