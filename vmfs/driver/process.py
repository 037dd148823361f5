"""The driver process: wires a transport, the operations and the engine, and serves.

Owns what happens around the batch loop: the served root and mount state (INITIALISE /
DEINITIALISE), crash-restart recovery through the journal, sleeping until the client or the
ring has something, signals, and the counters.
"""

from __future__ import annotations

import _blake2 as hashlib  # hashlib.blake2b itself, without loading OpenSSL (3.4 MiB)
import logging
import os
import select
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmfs import fsm, uring
from vmfs._native import lib
from vmfs.driver import inline, native
from vmfs.driver.executor import Executor
from vmfs.driver.handles import HandleTable
from vmfs.driver.journal import HEADER_SIZE as JOURNAL_HEADER_SIZE
from vmfs.driver.journal import Journal
from vmfs.driver.ops import Operations
from vmfs.driver.queueport import QueuePort
from vmfs.driver.refusals import RefusalLog
from vmfs.driver.stats import Counters
from vmfs.shm import Share, SharedIndexWords
from vmfs.uio import Transport
from vmfs.wire import QueueView, Status

log = logging.getLogger("vmfs")

CRASH_ON_ID_VARIABLE = "VMFS_TESTING_CRASH_ON_ID"
CRASH_EXIT_CODE = 70


@dataclass
class Options:
    root: str | None = None  # directory mode: serve this directory
    block_device: str | None = None  # block mode: mount this on INITIALISE
    mount_point: str = "/mnt"
    sync_mount: bool = True
    use_uring: bool = True
    ring_entries: int = 1024
    handle_limit: int = 1024
    state_dir: str | None = None
    inline_ops: frozenset[int] = frozenset()
    fast_path: bool = True  # the native loop (driver.native) and inline calls (driver.inline)
    spin_us: int = 0  # the native loop polls the queue this long before it sleeps
    bounce: bool = False  # treat the share as device memory even on loopback (measuring)


class Lifecycle:
    """Model object of the driver and mount machines (fsm.driver_machine / mount_machine)."""

    state: str


class Driver:
    def __init__(self, transport: Transport, options: Options) -> None:
        self.transport = transport
        self.options = options
        self.lifecycle = Lifecycle()
        fsm.driver_machine(self.lifecycle)
        self.mount_state = Lifecycle()
        fsm.mount_machine(self.mount_state)
        self.counters = Counters()
        self.share = Share(transport.data, transport.direct_io and not options.bounce)
        self.mounter: Any = None
        if options.block_device:
            from vmfs.driver.mount import Mounter

            self.mounter = Mounter(options.block_device, options.mount_point, options.sync_mount)
        self.ring: uring.Ring | None = None
        if options.use_uring:
            try:
                self.ring = uring.Ring(options.ring_entries)
            except (uring.RingUnavailable, OSError) as e:
                log.warning("io_uring unavailable (%s); serving with synchronous calls", e)
        inline_ops = set(options.inline_ops)
        if self.ring is not None:
            inline_ops |= {op for op in uring.Op if op not in self.ring.supported}
        self.journal = Journal(self._state_dir() / "journal", self._identity())
        self.native = native.Context(options.handle_limit, ring_available=self.ring is not None)
        self.handles = HandleTable(context=self.native)
        self.ops = Operations(
            self.share, self.handles, lambda: self.root_fd, self.initialise, self.deinitialise
        )
        self.native.attach_queues(transport.command, transport.completion)
        self.native.attach_journal(self.journal.mapping, JOURNAL_HEADER_SIZE)
        counters = self.counters
        self.native.attach_counts(counters.by_status, counters.latency, counters.batches)
        self.native.ctx.spin_us = options.spin_us
        try_now = None
        if options.fast_path and self.ring is not None:
            try_now = inline.Inline(self.native)
        port = QueuePort(
            QueueView(transport.command, SharedIndexWords(transport.command)),
            QueueView(transport.completion, SharedIndexWords(transport.completion)),
            journal=self.journal,
            counters=self.counters,
            device_memory=not self.share.direct,
        )
        port.notify = transport.notify  # type: ignore[method-assign]
        executor = Executor(self.ring, uring.perform, frozenset(inline_ops), try_now)
        self.engine = fsm.Engine(
            port,
            self.ops,
            executor,
            self.initialised,
            native=self.native if options.fast_path else None,
        )
        self.refusals = RefusalLog(detail=log.isEnabledFor(logging.DEBUG))
        self.engine.on_refusal = self.refusals
        crash_on = os.environ.get(CRASH_ON_ID_VARIABLE)
        if crash_on:
            self._crash_on_id_for_testing(int(crash_on, 0))
        self._stopping = False
        self._restore_mount_state()
        self.lifecycle.attach()

    def _crash_on_id_for_testing(self, cmd_id: int) -> None:
        """Tests of restart safety only: die, as a crash would, when the command with this id
        starts (after the journal has recorded it). A poison command, on demand."""
        log.warning("%s=%d: this driver dies on that command", CRASH_ON_ID_VARIABLE, cmd_id)
        self.native.ctx.crash_on_id = cmd_id
        self.native.ctx.crash_exit_code = CRASH_EXIT_CODE

        def wrap(run: Any) -> Any:
            def crash_or_run(req: Any) -> Any:
                if req.id == cmd_id:
                    os._exit(CRASH_EXIT_CODE)
                return run(req)

            return crash_or_run

        for cmd, run in list(self.ops.table.items()):
            self.ops.table[cmd] = wrap(run)

    # -- state --------------------------------------------------------------------------------

    @property
    def root_fd(self) -> int | None:
        """The served root's descriptor (kept in the native context, which both loops read)."""
        return self.native.root_fd

    @root_fd.setter
    def root_fd(self, fd: int | None) -> None:
        self.native.root_fd = fd

    def _state_dir(self) -> Path:
        if self.options.state_dir:
            return Path(self.options.state_dir)
        directory = getattr(self.transport, "directory", None)
        return Path(directory) if directory else Path("/run/vmfs")

    def _identity(self) -> bytes:
        """Ties the journal to this very queue: a recreated queue starts a fresh journal.

        Not the file's ctime: every store through the mapping updates it, so a driver restarted
        on the same queue would throw away its own journal (and the INITIALISE it records).
        """
        parts = [self.transport.description.encode()]
        directory = getattr(self.transport, "directory", None)
        if directory:
            st = os.stat(Path(directory) / "vmfs_command")
            parts.append(f"{st.st_dev}:{st.st_ino}".encode())  # writes change ctime: not it
        try:
            parts.append(Path("/proc/sys/kernel/random/boot_id").read_bytes())
        except OSError:
            pass
        return hashlib.blake2b(b"\0".join(parts), digest_size=16).digest()

    def _restore_mount_state(self) -> None:
        """A restarted driver keeps the client's INITIALISE (docs/protocol.md "Restarts").

        After a crash the device is still mounted; after a clean stop (which unmounts) it is
        mounted again here.
        """
        if self.mounter is not None:
            if self.mounter.is_mounted():
                self._open_root(self.options.mount_point)
            elif self.journal.initialised:
                try:
                    self.mounter.mount()
                    self._open_root(self.options.mount_point)
                except Exception as e:
                    log.warning("cannot mount again what the client initialised: %s", e)
        elif self.journal.initialised:
            self._open_root(self.options.root or ".")

    def _open_root(self, path: str) -> None:
        self.root_fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.mount_state.initialise()

    def initialised(self) -> bool:
        """What the mount machine says: commands other than (DE)INITIALISE are served only
        between a successful INITIALISE and the next DEINITIALISE."""
        return self.mount_state.state == "initialised"

    def initialise(self) -> Status:
        if self.root_fd is not None:
            self.mount_state.initialise()
            return Status.SUCCESS
        try:
            if self.mounter is not None:
                self.mounter.mount()
                self._open_root(self.options.mount_point)
            else:
                self._open_root(self.options.root or ".")
            self.journal.initialised = True
        except Exception as e:  # mount errors of every kind become a status
            log.warning("INITIALISE failed: %s", e)
            self.mount_state.mount_failed()
            return Status.ERROR
        log.info("initialised: serving %s", self.served_root)
        if self.native.open_looks():
            log.info(
                "%s may hold device nodes (not mounted nodev): FILE_OPEN looks before each open",
                self.served_root,
            )
        return Status.SUCCESS

    def deinitialise(self) -> Status:
        if self.root_fd is None:
            self.mount_state.deinitialise()
            return Status.SUCCESS
        closed = self.handles.close_all()
        os.close(self.root_fd)  # our own reference to the root would keep the mount busy
        self.root_fd = None
        if self.mounter is not None:
            try:
                self.mounter.unmount()
            except Exception as e:
                log.warning("DEINITIALISE: unmount failed: %s", e)
                self._open_root(self.options.mount_point)
                self.mount_state.unmount_failed()
                return Status.ERROR
        else:
            os.sync()
        self.journal.initialised = False
        self.mount_state.deinitialise()
        log.info("deinitialised (%d handles closed)", closed)
        return Status.SUCCESS

    @property
    def served_root(self) -> str:
        if self.mounter is not None:
            return f"{self.options.block_device} on {self.options.mount_point}"
        return os.path.abspath(self.options.root or ".")

    # -- serving ------------------------------------------------------------------------------

    def describe(self) -> str:
        if self.ring is None:
            engine = "synchronous calls (io_uring off)"
        else:
            ops = ",".join(sorted(op.name.lower() for op in self.ring.supported))
            engine = f"io_uring {self.ring.entries} entries, opcodes {ops}"
        state = "initialised" if self.initialised() else "waiting for INITIALISE"
        return (
            f"vmfs serving {self.served_root} over {self.transport.description}; {engine}; {state}"
        )

    def request_stop(self, *_: Any) -> None:
        self._stopping = True

    def serve(self, *, restore_signal_handlers: bool = True) -> int:
        """Serve until stopped; finish in-flight work; leave untaken commands queued.

        A process that exits after serving passes restore_signal_handlers=False, so a second
        SIGTERM during its cleanup (unmount, trace close) still means "stop", not "die now".
        """
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handlers = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        handlers[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._report)
        log.info(self.describe())  # only now: whoever waits for this line may signal at once
        poller = select.poll()
        irq = self.transport.fileno()
        poller.register(irq, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        ring_fd = self.ring.eventfd() if self.ring is not None else -1
        if ring_fd >= 0:
            poller.register(ring_fd, select.POLLIN)
        self.lifecycle.resume()
        engine = self.engine
        natively = engine.native is not None
        if natively:
            irq_fd, notify_fd, doorbell = self.transport.native_signals()
            self.native.attach_transport(irq_fd, notify_fd, doorbell, wake_r)
            if self.ring is not None and ring_fd >= 0:
                self.native.attach_ring(self.ring.native_ring, ring_fd)
            engine.hand_back = True
        try:
            while not self._stopping:
                if natively and engine.tap is None and engine.quiescent():
                    reason = engine.run_native()
                    if reason == lib.VMFS_LOOP_WOKEN:
                        _drain(wake_r)
                        continue
                    if reason == lib.VMFS_LOOP_IDLE:
                        self.refusals.roll()
                        continue
                    if reason == lib.VMFS_LOOP_REFUSED:
                        continue
                if engine.pump():
                    continue
                for fd, _ in poller.poll(1000):
                    if fd == irq:
                        self.transport.acknowledge()
                    elif fd == ring_fd:
                        _drain(ring_fd)
                    elif fd == wake_r:
                        _drain(wake_r)
                self.refusals.roll()
            self.lifecycle.stop()
            engine.flush()
            engine.publish()
            self.lifecycle.drained()
            self.refusals.roll(final=True)
            self._unmount_on_stop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            if restore_signal_handlers:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        log.info("stopped")
        self._report()
        return 0

    def _report(self, *_: Any) -> None:
        for line in self.counters.report().splitlines():
            log.info("counters: %s", line.strip())
        if self.engine.native is not None:
            log.info("counters: served by the native loop: %d", self.native.ctx.served)

    def _unmount_on_stop(self) -> None:
        """A clean stop leaves no filesystem mounted and no loop device attached: the device
        (a FAT disk, say) is consistent when the VM goes down. The journal keeps the client's
        INITIALISE, so the next driver mounts it again. A crash skips this and leaves the
        mount for the next driver, which finds it."""
        if self.mounter is None or self.root_fd is None:
            return
        closed = self.handles.close_all()
        os.close(self.root_fd)
        self.root_fd = None
        try:
            self.mounter.unmount()
        except Exception as e:
            log.warning("stopping: cannot unmount %s: %s", self.options.mount_point, e)
            return
        log.info(
            "stopping: synced and unmounted %s from %s (%d handles closed)",
            self.options.block_device,
            self.options.mount_point,
            closed,
        )

    def close(self) -> None:
        self.native.close()
        self.handles.close_all()
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None
        if self.ring is not None:
            self.ring.close()
        self.journal.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
