"""Batches whose pipelined answers once differed from one-at-a-time answers, in every mode.

Each batch is sent as one pipelined batch to a `vmfs serve` subprocess; the expected answers are
what the protocol's one-at-a-time semantics give, written out by hand. VMFS_ORDERING_REPEATS
(default 3) says how often each batch runs, on a fresh file each time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from batch_helpers import (
    MODES,
    Answer,
    Step,
    mkdir,
    open_,
    opendir,
    read,
    remove,
    rename,
    rmdir,
    run_pipelined,
    size,
    stat,
    truncate,
    write,
)
from memory_fs import on_memory_filesystem

from vmfs.client import Client, LoopbackServer
from vmfs.wire import MAX_PATH_LENGTH, STAT_FAST, STAT_FIELDS, OpenFlags, Status

REPEATS = int(os.environ.get("VMFS_ORDERING_REPEATS", "3"))
OK = Status.SUCCESS
RW_CREATE = OpenFlags.READ_WRITE | OpenFlags.CREATE


@pytest.fixture(
    scope="module",
    params=[(mode, fs) for mode in sorted(MODES) for fs in ("disk", "memory")],
    ids="-".join,
)
def served(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[tuple[Client, Path]]:
    """A driver per mode on a disk and on a memory filesystem, whose lanes differ."""
    mode, fs = request.param
    with ExitStack() as stack:
        if fs == "memory":
            base = stack.enter_context(on_memory_filesystem(f"vmfs-batches-{mode}-"))
        else:
            base = tmp_path_factory.mktemp(f"batches-{mode}")
        srv = stack.enter_context(
            LoopbackServer(root=base / "root", directory=base / "loop", extra_args=MODES[mode])
        )
        assert srv.client.initialise().ok
        yield srv.client, srv.root


def fresh_file(client: Client, root: Path, content: bytes) -> int:
    (root / "f").write_bytes(content)
    opened = client.open("/f", OpenFlags.READ_WRITE)
    assert opened.ok, opened
    return opened.data


def run(client: Client, root: Path, content: bytes, batch: list[Step]) -> list[Answer]:
    handle = fresh_file(client, root, content)
    try:
        return run_pipelined(client, [_bind(step, handle) for step in batch])
    finally:
        assert client.close(handle).ok


def _bind(step: Step, handle: int) -> Step:
    if "fd" in step.fields:
        step.fields["fd"] = handle
    return step


H = 0  # stands for the batch's file handle; bound when the batch runs


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_read_of_the_gap_a_write_opened(served: tuple[Client, Path], repeat: int) -> None:
    client, root = served
    answers = run(client, root, b"x" * 100, [write(H, 200, b"y" * 10), read(H, 150, 10), size(H)])
    assert answers == [Answer(OK, 10, b""), Answer(OK, 10, bytes(10)), Answer(OK, 210, b"")]


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_read_of_a_far_gap(served: tuple[Client, Path], repeat: int) -> None:
    client, root = served
    answers = run(client, root, b"x" * 100, [write(H, 900000, b"y" * 10), read(H, 500000, 224)])
    assert answers == [Answer(OK, 10, b""), Answer(OK, 224, bytes(224))]


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_short_read_is_not_continued_past_a_later_write(
    served: tuple[Client, Path], repeat: int
) -> None:
    client, root = served
    batch = [write(H, 0, b"y" * 10), read(H, 0, 1000), write(H, 5000, b"z" * 10)]
    answers = run(client, root, b"x" * 100, batch)
    assert answers[1] == Answer(OK, 100, b"y" * 10 + b"x" * 90)
    assert (root / "f").stat().st_size == 5010


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_read_after_truncate_is_not_continued_past_a_later_write(
    served: tuple[Client, Path], repeat: int
) -> None:
    client, root = served
    batch = [truncate(H, 100), read(H, 0, 1000), write(H, 5000, b"z" * 10)]
    answers = run(client, root, b"x" * 10000, batch)
    assert answers == [Answer(OK, 0, b""), Answer(OK, 100, b"x" * 100), Answer(OK, 10, b"")]


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_hole_after_truncate_and_write_reads_as_zeros(
    served: tuple[Client, Path], repeat: int
) -> None:
    client, root = served
    batch = [truncate(H, 100), write(H, 5000, b"z" * 10), read(H, 1000, 100), size(H)]
    answers = run(client, root, b"x" * 10000, batch)
    assert answers[2:] == [Answer(OK, 100, bytes(100)), Answer(OK, 5010, b"")]


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_write_does_not_overtake_an_earlier_read_of_its_range(
    served: tuple[Client, Path], repeat: int
) -> None:
    """A read too large to bounce in one go is left to the ring, on tmpfs too; the write after
    it could be done at once, before the read has even been submitted."""
    client, root = served
    big = 2 << 20
    answers = run(client, root, b"x" * big, [read(H, 0, big), write(H, 0, b"y" * 10)])
    assert (answers[0].status, answers[0].data) == (OK, big)
    assert answers[0].output[:10] == b"x" * 10
    assert answers[1] == Answer(OK, 10, b"")


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_two_extending_writes_then_size(served: tuple[Client, Path], repeat: int) -> None:
    client, root = served
    batch = [write(H, 300, b"a" * 10), write(H, 200, b"b" * 10), size(H), read(H, 0, 400)]
    answers = run(client, root, b"x" * 100, batch)
    expected = b"x" * 100 + bytes(100) + b"b" * 10 + bytes(90) + b"a" * 10
    assert answers[2:] == [Answer(OK, 310, b""), Answer(OK, 310, expected)]


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_stat_by_path_sees_an_extending_write(served: tuple[Client, Path], repeat: int) -> None:
    client, root = served
    handle = fresh_file(client, root, b"x" * 100)
    try:
        answers = run_pipelined(client, [write(handle, 4000, b"y" * 96), stat(b"/f")])
    finally:
        assert client.close(handle).ok
    assert answers[1].status == OK
    record = dict(zip(STAT_FIELDS, STAT_FAST.unpack(answers[1].output), strict=True))
    assert record["size"] == 4096


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_names_follow_queue_order(served: tuple[Client, Path], repeat: int) -> None:
    client, root = served
    (root / "old").write_bytes(b"o")
    (root / "gone").write_bytes(b"g")
    batch = [
        rename(b"/old", b"/new"),
        open_(b"/new", OpenFlags.READ_ONLY),
        remove(b"/gone"),
        open_(b"/gone", OpenFlags.READ_ONLY),
        stat(b"/gone"),
    ]
    answers = run_pipelined(client, batch)
    assert [a.status for a in answers] == [OK, OK, OK, Status.NO_FILE, Status.NO_FILE]
    assert client.close(answers[1].data).ok
    (root / "new").unlink()


def padded(path: bytes, length: int) -> bytes:
    return path + b"\0" * (length - len(path))


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_path_buffer_longer_than_the_limit_is_refused(
    served: tuple[Client, Path], repeat: int
) -> None:
    client, root = served
    (root / "d").mkdir()
    (root / "f").write_bytes(b"f")
    too_long = MAX_PATH_LENGTH + 1
    batch = [
        open_(padded(b"/new", too_long), RW_CREATE),
        stat(padded(b"/f", too_long)),
        opendir(padded(b"/d", too_long)),
        remove(padded(b"/f", too_long)),
        rename(padded(b"/f", too_long), b"/g"),
        rename(b"/f", padded(b"/g", too_long)),
        mkdir(padded(b"/e", too_long)),
        rmdir(padded(b"/d", too_long)),
    ]
    answers = run_pipelined(client, batch)
    assert [a.status for a in answers] == [Status.INVALID_PATH] * len(batch)
    assert sorted(p.name for p in root.iterdir()) == ["d", "f"]
    at_limit = run_pipelined(client, [open_(padded(b"/new", MAX_PATH_LENGTH), RW_CREATE)])
    assert at_limit[0].status == OK
    assert client.close(at_limit[0].data).ok
    for name in ("new", "f"):
        (root / name).unlink()
    (root / "d").rmdir()
