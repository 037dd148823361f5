"""The real driver in the arm64 guest (one boot for this module): `fs_driver_init` started by
the guest's init serves /dev/vda; the host is the client. The restart test kills the driver
inside the guest while commands are queued; the session test then runs the full file-system
session, powers the guest off and reads the FAT image with mtools."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from guest_helpers import booted_guest

from vmfs import wire
from vmfs.guest.session import (
    EXPECTED_FILES,
    EXPECTED_LISTING,
    PATH_A,
    STAT_BUF,
    ProtocolClient,
    fs_session,
)
from vmfs.wire import Command, Status

pytestmark = pytest.mark.guest

KILL_DRIVER = "pkill -9 -f 'serve --uio'"


@dataclass
class Guest:
    vmm: object
    client: ProtocolClient
    disk: Path
    early_id: int


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    from vmfs.guest.vmm import DRIVER_REAL

    def queue_initialise(client: ProtocolClient) -> int:
        return client.submit(Command.INITIALISE)

    workdir = tmp_path_factory.mktemp("guest-driver")
    # A short back-off keeps the restart test quick; the supervisor logic is the shipped one.
    with booted_guest(workdir, DRIVER_REAL, queue_initialise, env={"VMFS_BACKOFF": "0.2"}) as (
        vmm,
        client,
        img,
        early,
    ):
        yield Guest(vmm, client, img, early)


def _stat_root(c: ProtocolClient) -> int:
    return c.submit(
        Command.STAT,
        wire.build_params(
            Command.STAT,
            path=c.put(PATH_A, b"/"),
            buf={"offset": STAT_BUF, "size": wire.STAT_SIZE},
        ),
    )


def test_initialise_queued_before_boot_mounts_the_disk(guest: Guest) -> None:
    assert guest.client.result(guest.early_id, timeout=120).status == Status.SUCCESS
    status, out = guest.vmm.exec("grep ' /mnt ' /proc/mounts")
    assert status == 0 and out.startswith("/dev/vda /mnt vfat"), out


def test_killed_driver_is_restarted_and_queued_commands_answered_once(guest: Guest) -> None:
    assert guest.vmm.alive(), "runs before the test that powers the guest off"
    c = guest.client
    assert c.result(guest.early_id, timeout=120).status == Status.SUCCESS
    before = len(c.answers)
    killed: list[tuple[int, str]] = []
    killer = threading.Thread(target=lambda: killed.append(guest.vmm.exec(KILL_DRIVER)))
    ids = [_stat_root(c) for _ in range(50)]
    killer.start()  # the kill lands while the next commands are being queued and served
    ids += [_stat_root(c) for _ in range(300)]
    killer.join(60)
    assert killed and killed[0][0] == 0, killed
    # Queued while the driver is dead or still starting up again.
    ids += [_stat_root(c) for _ in range(100)]
    started = time.monotonic()
    results = [c.result(i, timeout=120) for i in ids]
    restart_seconds = time.monotonic() - started
    c.drain()

    counts = {i: len(c.answers.get(i, [])) for i in ids}
    assert [i for i, n in counts.items() if n != 1] == []
    assert len(c.answers) == before + len(ids), "completions for ids nobody sent"
    # Commands the killed driver had already taken (one batch handed to io_uring, as many as
    # were queued when it pumped) are answered ERROR by the restarted one rather than run twice.
    # Commands queued after the kill was done were never started and must all succeed.
    failed = [i for i, r in zip(ids, results, strict=True) if r.status != Status.SUCCESS]
    assert {r.status for r in results if r.status != Status.SUCCESS} <= {Status.ERROR}
    if failed:
        assert failed == list(range(failed[0], failed[0] + len(failed))), failed
    assert all(r.status == Status.SUCCESS for r in results[-100:])
    log = guest.vmm.command_log()
    assert log.count("fs_driver_init: started driver") == 2, log[-3000:]
    assert "was killed by signal 9; restarting" in log
    print(
        f"{len(ids)} commands answered once; {len(failed)} interrupted (ERROR); "
        f"all answered {restart_seconds:.1f} s after the last was queued"
    )


def test_fs_session_through_the_real_driver_and_disk_after_poweroff(guest: Guest) -> None:
    from vmfs.guest import disk

    assert guest.client.result(guest.early_id, timeout=120).status == Status.SUCCESS
    fs_session(guest.client)
    _, out = guest.vmm.exec("grep -c ' /mnt ' /proc/mounts")
    assert out.strip() == "0", "DEINITIALISE must unmount /dev/vda"
    guest.vmm.stop()
    assert not guest.vmm.alive()
    assert disk.list_files(guest.disk) == EXPECTED_LISTING
    for name, content in EXPECTED_FILES.items():
        assert disk.read_file(guest.disk, name) == content
