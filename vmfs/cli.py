"""The `vmfs` command line: serve, demo, guest, and the tools around them.

Every expected failure ends here as one line, `vmfs: error: ...`, exit 2 for a bad command line
and 1 for a runtime failure; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from vmfs import __version__
from vmfs.errors import UsageError, VmfsError

if TYPE_CHECKING:
    from vmfs.driver.trace import Recorder

LOG_FORMAT = "%(asctime)s.%(msecs)03d vmfs: %(levelname)s %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
Subcommands = argparse._SubParsersAction  # type: ignore[type-arg]


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, told the terminal's width: left to find it, argparse imports
    shutil (and with it zlib, bz2 and lzma: ~0.8 MiB and ~2 ms) on every start, help or not."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _columns())


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size finds it: $COLUMNS, stdout, else 80."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a `UsageError` (one line, exit 2)."""

    late_epilog: Callable[[], str] | None = None  # built only when --help asks for it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("vmfs").strip()
        prefix = f"{where}: " if where else ""
        raise UsageError(f"{prefix}{message} (see {self.prog} --help)")

    def format_help(self) -> str:
        if self.late_epilog is not None:
            self.epilog = self.late_epilog()
        return super().format_help()


def _serve(args: argparse.Namespace) -> int:
    from vmfs.driver.preflight import check_serve
    from vmfs.driver.process import Driver, Options
    from vmfs.uio import LoopbackTransport, TransportError, UioTransport

    check_serve(args)
    try:
        if args.uio:
            transport = UioTransport.discover(
                sysfs_root=args.uio_sysfs, dev_root=args.uio_dev, wait_seconds=args.uio_wait
            )
        else:
            transport = LoopbackTransport(args.loopback)
    except TransportError as e:
        raise VmfsError(f"serve: cannot attach: {e}") from e
    options = Options(
        root=args.root,
        block_device=args.block_device,
        mount_point=args.mount_point,
        sync_mount=not args.no_sync,
        use_uring=not args.no_uring,
        handle_limit=args.handles,
        state_dir=args.state_dir,
        fast_path=not args.no_fast_path,
        bounce=args.bounce,
        spin_us=args.spin_us,
    )
    with contextlib.ExitStack() as cleanup:  # closed in reverse: trace, driver, transport
        cleanup.callback(transport.close)
        driver = Driver(transport, options)
        cleanup.callback(driver.close)
        recorder = _recorder(driver, args)
        if recorder is not None:
            cleanup.callback(recorder.close)
        try:
            return driver.serve(restore_signal_handlers=False)
        finally:
            # The stop is under way: a late SIGTERM/SIGINT must not cut short the trace's end
            # record, the closing or the exit (Python resets its handlers while it exits).
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)


def _recorder(driver: Any, args: argparse.Namespace) -> Recorder | None:
    if not args.record:
        return None
    from vmfs.driver.trace import Recorder

    try:
        return Recorder.attach(
            driver, args.record, cap=args.record_cap, compress=not args.record_uncompressed
        )
    except OSError as e:
        raise VmfsError(f"serve: cannot record to {args.record}: {e.strerror}") from e


def _loopback(args: argparse.Namespace) -> int:
    from vmfs.client.transport import create_loopback_dir
    from vmfs.uio import TransportError, lock_config

    directory = Path(args.directory)
    if args.data_mib < 1:
        raise UsageError(f"loopback create: --data-mib must be 1 or more, not {args.data_mib}")
    if directory.exists() and not directory.is_dir():
        raise VmfsError(f"loopback create: {directory} exists and is not a directory")
    lock = None
    if (directory / "vmfs_config").exists():
        try:
            lock = lock_config(directory / "vmfs_config")
        except TransportError as e:
            raise VmfsError(f"loopback create: {e}") from e
    try:
        create_loopback_dir(directory, data_size=args.data_mib << 20)
    except OSError as e:
        raise VmfsError(f"loopback create: cannot create {directory}: {e.strerror}") from e
    finally:
        if lock is not None:
            os.close(lock)
    print(f"vmfs: loopback directory {directory} ready: vmfs serve --loopback {directory} ...")
    return 0


def _diagram(args: argparse.Namespace) -> int:
    from vmfs.tools.diagram import main as diagram_main

    return diagram_main(args.out, args.check)


def _replay(args: argparse.Namespace) -> int:
    from vmfs.tools.replay import main as replay_main

    if args.timeout <= 0:
        raise UsageError(f"replay: --timeout must be more than 0, not {args.timeout:g}")
    return replay_main(args.trace, args.root, args.timeout, args.driver)


def _demo(args: argparse.Namespace) -> int:
    from vmfs.tools.demo import run_demo

    return run_demo(verbose=not args.quiet)


def _guest(args: argparse.Namespace) -> int:
    from vmfs.guest.__main__ import run_action

    return run_action(args)


def _add_guest(sub: Subcommands, common: dict[str, Any]) -> None:
    """`vmfs guest`: host-side only; an image without the guest tooling (the initrd of
    `vmfs guest image`) has no `guest` command and serves all the same."""
    try:
        from vmfs.guest.__main__ import DESCRIPTION, add_arguments
    except ImportError:
        return

    guest = sub.add_parser(
        "guest",
        help="build/boot an arm64 Linux guest running vmfs, driven from the host",
        description=DESCRIPTION,
    )
    add_arguments(guest)
    guest.set_defaults(func=_guest)


def _bench(args: argparse.Namespace) -> int:
    from vmfs.tools.bench import check_options
    from vmfs.tools.bench import main as bench_main

    check_options(args)
    return bench_main(args)


def _workload_epilog() -> str:
    from vmfs.tools.benchload import WORKLOADS

    names = ", ".join(w.name for w in WORKLOADS if not w.opt_in)
    extra = ", ".join(w.name for w in WORKLOADS if w.opt_in)
    return (
        f"Workloads (--workloads picks those whose name contains a given part): {names}. "
        f"Run only when a part begins their name (e.g. --workloads cold): {extra} (random "
        "reads of an ext4 image on disk with the page cache dropped first; needs root); and "
        "coldstart: spawn to first answer of `vmfs serve` beside a bare `python -c pass` "
        "(median of 5), and the driver's peak RSS after 20 000 STATs and 2 000 "
        "open/write/close (--ops N: N STATs, N/10 open/write/close)."
    )


def _add_serve(sub: Subcommands, common: dict[str, Any]) -> None:
    serve = sub.add_parser(
        "serve",
        **common,
        help="serve one client until SIGTERM/SIGINT",
        description=(
            "Serve one client's command queue until SIGTERM or SIGINT, then finish in-flight "
            "work and exit 0. Commands still queued stay queued for the next start."
        ),
    )
    where = serve.add_argument_group("transport")
    where.add_argument(
        "--loopback", metavar="DIR", help="loopback transport: files and FIFOs in DIR (no VM)"
    )
    where.add_argument(
        "--uio",
        action="store_true",
        help="real UIO devices (vmfs_config, vmfs_command, ...) found by compatible string",
    )
    where.add_argument(
        "--uio-wait",
        type=float,
        default=30.0,
        metavar="S",
        help="with --uio: how long to wait for the devices to appear (default 30)",
    )
    where.add_argument("--uio-sysfs", default="/sys/class/uio", help=argparse.SUPPRESS)
    where.add_argument("--uio-dev", default="/dev", help=argparse.SUPPRESS)
    what = serve.add_argument_group(
        "what to serve", "With --uio and no --root, --block-device defaults to /dev/vda."
    )
    what.add_argument("--root", metavar="DIR", help="serve this directory (directory mode)")
    what.add_argument(
        "--block-device",
        metavar="DEV",
        help="mount DEV (disk, partition or image file) on INITIALISE",
    )
    what.add_argument(
        "--mount-point", metavar="DIR", default="/mnt", help="where to mount (default: /mnt)"
    )
    what.add_argument("--no-sync", action="store_true", help="mount without synchronous writes")
    how = serve.add_argument_group("how")
    how.add_argument(
        "--no-uring", action="store_true", help="perform every call synchronously, no io_uring"
    )
    how.add_argument(
        "--no-fast-path",
        action="store_true",
        help="serve every command in the Python engine: no native serve loop and no inline "
        "calls (for comparison and tests)",
    )
    how.add_argument(
        "--spin-us",
        type=int,
        default=0,
        metavar="US",
        help="after the last command, the native loop watches the queue this long before it "
        "sleeps on the doorbell (default 0: sleep at once; spinning costs CPU while idle)",
    )
    how.add_argument(
        "--bounce",
        action="store_true",
        help="copy file data through private buffers as on real UIO device memory",
    )
    how.add_argument(
        "--handles", type=int, default=1024, metavar="N", help="open handle limit (default 1024)"
    )
    how.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the restart journal lives (default: the loopback DIR, or /run/vmfs)",
    )
    record = serve.add_argument_group("recording")
    record.add_argument(
        "--record", metavar="FILE", help="append every command and completion to a trace FILE"
    )
    record.add_argument(
        "--record-cap",
        type=int,
        default=64 * 1024,
        metavar="BYTES",
        help="bytes kept of each output buffer (read data, stat records, names); longer ones "
        "keep size and SHA-256; inputs are always kept whole (default 64 KiB)",
    )
    record.add_argument(
        "--record-uncompressed",
        action="store_true",
        help="store buffers as they are: faster recording of compressible data, bigger traces",
    )
    serve.set_defaults(func=_serve)


def _add_loopback(sub: Subcommands, common: dict[str, Any]) -> None:
    loopback = sub.add_parser(
        "loopback",
        **common,
        help="create the files and FIFOs of a loopback connection",
        description="The loopback transport's directory is the client's to create and size; "
        "`vmfs loopback create DIR` does it for a driver tried by hand.",
    )
    loopback_sub = loopback.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = loopback_sub.add_parser(
        "create",
        help="create (or recreate, emptying its queues) a loopback directory",
        description="Create DIR with vmfs_config, vmfs_command, vmfs_completion, vmfs_data, "
        "vmfs_fault, vmfs_irq and vmfs_notify. Refused while a driver serves DIR.",
    )
    create.add_argument("directory", metavar="DIR")
    create.add_argument(
        "--data-mib", type=int, default=64, metavar="N", help="data region size (default 64)"
    )
    create.set_defaults(func=_loopback)


def _add_demo(sub: Subcommands, common: dict[str, Any]) -> None:
    demo = sub.add_parser(
        "demo",
        **common,
        help="a short client session against a temporary root, printed step by step",
        description=(
            "Start a driver on a temporary directory over the loopback transport and walk a "
            "session a LionsOS program would run: mkdir, create, write, list, stat, read back, "
            "rename, remove. Prints each command, its status and result, then a summary."
        ),
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    demo.set_defaults(func=_demo)


def _add_diagram(sub: Subcommands, common: dict[str, Any]) -> None:
    diagram = sub.add_parser(
        "diagram",
        **common,
        help="render the state machines into diagrams/ (Mermaid, DOT, SVG) and README.md",
        description=(
            "Render the request, driver and mount machines of vmfs/fsm.py as Mermaid, DOT and "
            "SVG, and refresh the Mermaid blocks embedded in ./README.md. With --check, write "
            "nothing and exit 1 (naming the file) if a committed diagram is stale."
        ),
    )
    diagram.add_argument("--check", action="store_true", help="compare instead of writing")
    diagram.add_argument(
        "-o",
        "--out",
        type=Path,
        metavar="DIR",
        help="where the diagrams go (default: diagrams/, at the repository's root only)",
    )
    diagram.set_defaults(func=_diagram)


def _add_replay(sub: Subcommands, common: dict[str, Any]) -> None:
    replay = sub.add_parser(
        "replay",
        **common,
        help="replay a recorded trace against a fresh driver and compare every completion",
        description=(
            "Start a driver on a fresh copy of the trace's starting tree (or of --root), feed "
            "the recorded commands in the recorded batches, and compare each completion with "
            "the recorded one (handles, inodes, times normalised). Exit 1 on any mismatch, on "
            "commands the trace holds no completion for, or on a cut or malformed trace."
        ),
    )
    replay.add_argument("trace", metavar="FILE", help="a trace written by `vmfs serve --record`")
    replay.add_argument("--root", metavar="DIR", help="start from a copy of DIR instead")
    replay.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="per-batch wait (default 10)"
    )
    replay.add_argument(
        "--driver",
        metavar="CMD",
        help="replay against this program instead of `vmfs serve`: a command line in which {dir} "
        "is the loopback directory and {root} the served directory, e.g. "
        "'cvmfs --loopback {dir} --root {root}'",
    )
    replay.set_defaults(func=_replay)


def _add_bench(sub: Subcommands, common: dict[str, Any]) -> None:
    bench = sub.add_parser(
        "bench",
        **common,
        help="throughput and latency of vmfs serve beside in-process baselines",
        description=(
            "Run each workload against `vmfs serve` over the loopback transport and, in the same "
            "run, against the baselines: the same work in-process (sync: plain calls; uring: "
            "io_uring batches) and the driver with io_uring off. Reports ops/s, MiB/s, latency "
            "percentiles and the driver's CPU time per op, with ratios to the limit."
        ),
    )
    bench.add_argument("--seconds", type=float, default=2.0, help="measured time per run (2)")
    bench.add_argument("--ops", type=int, default=0, help="measure this many ops instead")
    bench.add_argument(
        "--workloads", nargs="*", default=[], metavar="NAME", help="only names containing these"
    )
    bench.add_argument(
        "--targets",
        default="vmfs,bounce,no-uring,sync,uring",
        help="comma list of vmfs, bounce, no-uring, sync, uring (default: all)",
    )
    bench.add_argument("--pin", type=int, metavar="CPU", help="run client and driver on this CPU")
    bench.add_argument("--root", metavar="DIR", help="served directory (default: a tmpfs dir)")
    bench.add_argument("--file-mib", type=int, default=32, help="size of the read file (32)")
    bench.add_argument(
        "--cold-mib", type=int, default=256, help="size of the cold-cache workload's file (256)"
    )
    bench.add_argument(
        "--cold-dir",
        default="/var/tmp",
        help="where the cold-cache workload makes its ext4 image: a disk, not tmpfs (/var/tmp)",
    )
    bench.add_argument("--json", action="store_true", help="print JSON instead of the table")
    bench.add_argument("--progress", action="store_true", help="progress line even if not a tty")
    bench.late_epilog = _workload_epilog
    bench.set_defaults(func=_bench)


COMMANDS: dict[str, Callable[[Subcommands, dict[str, Any]], None]] = {
    "serve": _add_serve,
    "loopback": _add_loopback,
    "demo": _add_demo,
    "diagram": _add_diagram,
    "replay": _add_replay,
    "guest": _add_guest,
    "bench": _add_bench,
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line; given the arguments it is about to parse, only the command they name
    gets its options (building all of them took a tenth of `vmfs serve`'s start-up)."""
    parser = _Parser(
        prog="vmfs",
        description=(
            "Serve the LionsOS file-system protocol from a Linux guest: commands from a native "
            "LionsOS client's queue are performed on a Linux filesystem through io_uring."
        ),
    )
    parser.add_argument("-V", "--version", action="version", version=f"vmfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every refusal in detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verbosity = _Parser(add_help=False)
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    common = {"parents": [verbosity]}

    chosen = None if argv is None else _named_command(argv)
    for name, add in COMMANDS.items():
        if chosen in (None, name):
            add(sub, common)
    return parser


def _named_command(argv: Sequence[str]) -> str | None:
    """The command `argv` names (the first word that is not an option: the top-level options
    take no value), or None if it names none."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def configure_logging(verbose: bool) -> None:
    """Every line with a timestamp: the driver's log is a boot log (console or VMFS_LOG)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=LOG_FORMAT,
        datefmt=LOG_DATE_FORMAT,
        stream=sys.stderr,
    )
    logging.getLogger("transitions").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = build_parser(argv).parse_args(argv)
        configure_logging(args.verbose)
        return int(args.func(args) or 0)
    except VmfsError as e:
        print(f"vmfs: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vmfs: interrupted", file=sys.stderr)
        return 130
