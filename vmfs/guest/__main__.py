"""`python -m vmfs.guest {build,demo,run}`: the arm64 guest harness from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vmfs.guest.build import DEFAULT_CACHE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmfs.guest", description=__doc__)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="build cache directory")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("build", help="build the guest image (cached, idempotent)")
    demo = sub.add_parser("demo", help="build, boot, run a client session, check the disk")
    demo.add_argument("--driver", choices=("standin", "real"), help="default: demo.DEMO_DRIVER")
    demo.add_argument("--keep", action="store_true", help="keep the run directory")
    run = sub.add_parser("run", help="boot and run one shell command in the guest")
    run.add_argument("script", help="shell command run by the guest's init")
    run.add_argument("--disk", type=Path, help="FAT image attached as /dev/vda")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s"
    )

    if args.action == "build":
        from vmfs.guest.build import build

        print(build(args.cache))
        return 0
    if args.action == "demo":
        from vmfs.guest import demo as demo_mod
        from vmfs.guest.vmm import DRIVER_REAL, DRIVER_STANDIN

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


if __name__ == "__main__":
    sys.exit(main())
