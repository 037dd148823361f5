"""Differential property: a pipelined batch answers what the same commands one at a time answer.

Hypothesis draws a small tree (a few files of various sizes, a directory) and a batch of up to a
queue's capacity of commands over a few handles and names: extending writes and holes,
truncates, reads past the end, FILE_SIZE, STAT, renames, removes, opens (with and without
CREATE), directory creation, removal and listing. The batch runs once pipelined and once one
command at a time, each on its own fresh copy of the tree, against a real `vmfs serve` in every
mode and on a disk and a memory filesystem. Every answer (status, data, bytes read, stat records
without dev, inode and times), every listing taken and the final trees must be identical.

The CI profile is short; VMFS_DIFFERENTIAL_EXAMPLES (examples per mode and filesystem) selects
a longer run, and the `slow` test runs a long one.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from batch_helpers import (
    MODES,
    Answer,
    Step,
    close,
    mkdir,
    open_,
    opendir,
    read,
    readdir,
    remove,
    rename,
    rewinddir,
    rmdir,
    run_one_at_a_time,
    run_pipelined,
    size,
    snapshot,
    stat,
    sync,
    truncate,
    write,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from memory_fs import memory_directory

from vmfs.client import Client, LoopbackServer
from vmfs.wire import QUEUE_CAPACITY, STAT_FAST, STAT_FIELDS, Command, OpenFlags, Status

CI_EXAMPLES = int(os.environ.get("VMFS_DIFFERENTIAL_EXAMPLES", "100"))
SLOW_EXAMPLES = int(os.environ.get("VMFS_DIFFERENTIAL_SLOW_EXAMPLES", "400"))
FILES = ("a", "b", "d/c")  # the files a tree may start with; "d" is always a directory
NAMES = ("a", "b", "d/c", "d", "e", "d/f")  # what commands name (some never exist at first)
NO_HANDLE = 0x7FFF_FFFF  # a handle value no open returns: stands for a file the tree lacks
TIMELESS = tuple(f for f in STAT_FIELDS if f not in ("dev", "ino") and "time" not in f)
FILESYSTEMS = ("disk", "memory")


@dataclass
class Tree:
    files: dict[str, bytes]  # FILES present at the start, with their contents


@dataclass
class Case:
    tree: Tree
    batch: list[tuple[Any, ...]]  # commands with handle and path placeholders (see bind)


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[tuple[str, str], tuple[Client, Path]]]:
    """One `vmfs serve` per mode and filesystem, all kept for the module."""
    started: dict[tuple[str, str], tuple[Client, Path]] = {}
    stack = []
    try:
        for (mode, args), fs in itertools.product(MODES.items(), FILESYSTEMS):
            where = tmp_path_factory.mktemp(f"differential-{mode}-{fs}")
            own_root = None
            if fs == "memory":  # a unique name: other test runs may share the memory filesystem
                own_root = Path(tempfile.mkdtemp(prefix=where.name, dir=memory_directory()))
            root = own_root or where / "root"
            srv = LoopbackServer(root=root, directory=where / "loop", extra_args=args)
            stack.append((srv, own_root))
            assert srv.client.initialise().ok
            started[(mode, fs)] = (srv.client, root)
        yield started
    finally:
        for srv, own_root in stack:
            srv.close()
            if own_root is not None:
                shutil.rmtree(own_root, ignore_errors=True)


# -- strategies ----------------------------------------------------------------------------------

offsets = st.one_of(st.integers(0, 12000), st.sampled_from([0, 100, 4095, 4096, 5000, 9000]))
lengths = st.one_of(st.integers(1, 3000), st.sampled_from([1, 10, 100, 4096]))
handles = st.integers(0, len(FILES) - 1)
names = st.sampled_from(NAMES)
open_flags = st.sampled_from(
    [
        OpenFlags.READ_ONLY,
        OpenFlags.READ_WRITE,
        OpenFlags.READ_WRITE | OpenFlags.CREATE,
        OpenFlags.WRITE_ONLY | OpenFlags.CREATE,
    ]
)

file_commands = st.one_of(
    st.tuples(st.just("write"), handles, offsets, lengths, st.integers(1, 255)),
    st.tuples(st.just("read"), handles, offsets, st.integers(1, 6000)),
    st.tuples(st.just("truncate"), handles, offsets),
    st.tuples(st.just("size"), handles),
)
other_commands = st.one_of(
    st.tuples(st.just("sync"), handles),
    st.tuples(st.just("close"), handles),
    st.tuples(st.just("stat"), names),
    st.tuples(st.just("rename"), names, names),
    st.tuples(st.just("remove"), names),
    st.tuples(st.just("open"), names, open_flags),
    st.tuples(st.just("mkdir"), names),
    st.tuples(st.just("rmdir"), names),
    st.tuples(st.just("opendir"), st.sampled_from(("", "d", "e"))),
    st.tuples(st.just("readdir")),
    st.tuples(st.just("rewinddir")),
)
# File data commands drawn about as often as all the others together: sizes are where the
# interesting interleavings are, and each other kind still comes up every few batches.
commands = st.one_of(file_commands, other_commands)

trees = st.builds(
    Tree,
    st.dictionaries(
        st.sampled_from(FILES),
        st.integers(0, 9000).map(lambda n: bytes((i * 7 + 1) % 251 for i in range(n))),
        min_size=1,
    ),
)
cases = st.builds(Case, trees, st.lists(commands, min_size=1, max_size=QUEUE_CAPACITY))


# -- running -------------------------------------------------------------------------------------

_runs = itertools.count()


def bind(command: tuple[Any, ...], top: bytes, files: list[int], listing: int) -> Step:
    """The step for a command drawn with placeholders, in the run directory `top`."""
    kind, *args = command

    def path(name: str) -> bytes:
        return top + b"/" + name.encode() if name else top

    if kind == "write":
        handle, offset, length, fill = args
        return write(files[handle], offset, bytes([fill]) * length)
    if kind == "read":
        return read(files[args[0]], args[1], args[2])
    if kind == "truncate":
        return truncate(files[args[0]], args[1])
    if kind in ("size", "sync", "close"):
        return {"size": size, "sync": sync, "close": close}[kind](files[args[0]])
    if kind == "stat":
        return stat(path(args[0]))
    if kind == "rename":
        return rename(path(args[0]), path(args[1]))
    if kind == "open":
        return open_(path(args[0]), args[1])
    if kind in ("remove", "mkdir", "rmdir", "opendir"):
        return {"remove": remove, "mkdir": mkdir, "rmdir": rmdir, "opendir": opendir}[kind](
            path(args[0])
        )
    return {"readdir": readdir, "rewinddir": rewinddir}[kind](listing)


def run_case(client: Client, root: Path, case: Case, pipelined: bool) -> dict[str, Any]:
    """Build the tree in a fresh directory, run the batch one way, return what was observed."""
    name = f"run{next(_runs)}"
    top = root / name
    (top / "d").mkdir(parents=True)
    for file, content in case.tree.files.items():
        (top / file).write_bytes(content)
    present = case.tree.files
    rw = OpenFlags.READ_WRITE
    files = [client.open(f"/{name}/{f}", rw).data if f in present else NO_HANDLE for f in FILES]
    listing = client.opendir(f"/{name}")
    assert listing.ok, listing
    steps = [bind(c, f"/{name}".encode(), files, listing.data) for c in case.batch]
    answers = (run_pipelined if pipelined else run_one_at_a_time)(client, steps)
    observed = [comparable(client, s, a) for s, a in zip(steps, answers, strict=True)]
    for handle in files:
        client.close(handle)
    assert client.closedir(listing.data).ok
    tree = snapshot(top)
    shutil.rmtree(top)
    return {"answers": observed, "tree": tree}


def comparable(client: Client, step: Step, answer: Answer) -> Any:
    """What must agree between the two runs; handles and listings taken are read out here."""
    if step.cmd == Command.STAT and answer.status == Status.SUCCESS:
        record = dict(zip(STAT_FIELDS, STAT_FAST.unpack(answer.output), strict=True))
        return answer.status, {f: record[f] for f in TIMELESS}
    if step.cmd == Command.FILE_OPEN and answer.status == Status.SUCCESS:
        assert client.close(answer.data).ok
        return answer.status, "handle"
    if step.cmd == Command.DIR_OPEN and answer.status == Status.SUCCESS:
        return answer.status, read_listing(client, answer.data)
    return answer


def read_listing(client: Client, handle: int) -> list[bytes]:
    names = []
    while True:
        done, name = client.readdir(handle)
        if not done.ok or name is None:
            break
        names.append(name)
    assert client.closedir(handle).ok
    return names


def check(servers: dict[tuple[str, str], tuple[Client, Path]], case: Case) -> None:
    for (mode, fs), (client, root) in servers.items():
        one_at_a_time = run_case(client, root, case, pipelined=False)
        pipelined = run_case(client, root, case, pipelined=True)
        assert pipelined == one_at_a_time, f"mode {mode}, {fs} filesystem"


@settings(
    max_examples=CI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases)
# What the long run found when reads past the end did not wait for a write growing the file.
@example(case=Case(Tree({"a": b""}), [("write", 0, 1, 1, 1), ("read", 0, 0, 1)]))
@example(case=Case(Tree({"a": bytes(100)}), [("read", 0, 0, 1000), ("write", 0, 5000, 10, 1)]))
@example(  # a listing reads the live directory: it must see the remove queued before it
    case=Case(
        Tree({"a": b""}), [("write", 0, 0, 1, 1), ("read", 0, 0, 1), ("remove", "a"), ("readdir",)]
    )
)
def test_pipelined_batch_answers_as_one_at_a_time(servers, case: Case) -> None:
    check(servers, case)


@pytest.mark.slow
@settings(
    max_examples=SLOW_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases)
def test_pipelined_batch_answers_as_one_at_a_time_many_examples(servers, case: Case) -> None:
    check(servers, case)
