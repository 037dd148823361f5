"""What `vmfs serve` checks before it says "serving": a driver at boot fails fast with the
reason (so `fs_driver_init` logs it) instead of answering ERROR to every INITIALISE forever.

Each check raises `UsageError` (the command line contradicts itself) or `VmfsError` (the
command line is fine, the machine is not) with one line that says what to do.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from vmfs.driver.native import MAX_SLOTS
from vmfs.errors import UsageError, VmfsError

DEFAULT_UIO_DEVICE = "/dev/vda"


def check_serve(args: argparse.Namespace) -> None:
    """Validate `vmfs serve`'s arguments and what they name; fills in the UIO default device."""
    if bool(args.loopback) == bool(args.uio):
        raise UsageError("serve: give exactly one of --loopback DIR or --uio")
    if args.root is not None and args.block_device is not None:
        raise UsageError(
            "serve: --root and --block-device exclude each other "
            "(serve a directory, or mount a device)"
        )
    if args.uio and args.root is None and args.block_device is None:
        args.block_device = DEFAULT_UIO_DEVICE
    if args.root is None and args.block_device is None:
        raise UsageError("serve: give --root DIR or --block-device DEV")
    if not 1 <= args.handles <= MAX_SLOTS:
        raise UsageError(f"serve: --handles must be 1..{MAX_SLOTS}, not {args.handles}")
    if args.record_cap < 0:
        raise UsageError(f"serve: --record-cap must be 0 or more, not {args.record_cap}")
    if not 0 <= args.spin_us <= 1_000_000:
        raise UsageError(f"serve: --spin-us must be 0..1000000, not {args.spin_us}")
    if args.uio_wait < 0:
        raise UsageError(f"serve: --uio-wait must be 0 or more, not {args.uio_wait:g}")
    if args.root is not None:
        check_root(args.root)
    else:
        check_block_device(args.block_device)
        check_mount_point(args.mount_point)
    if args.loopback:
        check_loopback(args.loopback)
    if args.state_dir:
        check_state_dir(args.state_dir)
    if args.record:
        check_record(args.record)


def check_root(root: str) -> None:
    try:
        st = os.stat(root)
    except OSError as e:
        raise VmfsError(f"serve: cannot serve --root {root}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise VmfsError(f"serve: cannot serve --root {root}: not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise VmfsError(f"serve: cannot serve --root {root}: permission denied")


def check_block_device(device: str) -> None:
    """The device exists, is a block device or an image file, and can be read now.

    Later changes (the device disappears) are INITIALISE's to report, as an ERROR status.
    """
    try:
        st = os.stat(device)
    except OSError as e:
        raise VmfsError(f"serve: cannot use --block-device {device}: {e.strerror}") from e
    if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise VmfsError(
            f"serve: cannot use --block-device {device}: neither a block device nor an image file"
        )
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise VmfsError(f"serve: cannot read --block-device {device}: {e.strerror}") from e
    os.close(fd)


def check_mount_point(mount_point: str) -> None:
    if os.path.lexists(mount_point) and not os.path.isdir(mount_point):
        raise VmfsError(f"serve: --mount-point {mount_point} exists and is not a directory")


def check_loopback(directory: str) -> None:
    config = Path(directory) / "vmfs_config"
    if not config.exists():
        what = "has no vmfs_config" if Path(directory).is_dir() else "does not exist"
        raise VmfsError(
            f"serve: loopback directory {directory} {what} "
            f"(create one with `vmfs loopback create {directory}`)"
        )


def check_state_dir(directory: str) -> None:
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise VmfsError(f"serve: --state-dir {directory} exists and is not a directory")


def check_record(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise VmfsError(f"serve: cannot record to {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise VmfsError(f"serve: cannot record to {path}: it is a directory")
