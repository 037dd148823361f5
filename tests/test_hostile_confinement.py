"""Nothing outside the served root is ever named, read, listed, written, created or removed.

A canary tree sits next to the root; the root holds symlinks pointing out of it (absolute and
relative, to files and directories), symlink loops, and paths full of "..". After every attack
the canary must be byte-identical (contents, modes, sizes, mtimes), none of its names may have
been listed to the client and none of its bytes may have reached the share. Expected statuses
follow docs/protocol.md "Paths": symlinks resolve inside the root, so targets outside simply do
not exist.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hostile_helpers import (
    CANARY_TOKEN,
    Canary,
    assert_no_extra_completions,
    assert_share_clean,
    message,
    params,
    send_many,
    wait_all,
)

from vmfs.client import Client, LoopbackServer
from vmfs.wire import Command

SUCCESS, ERROR, INVALID_PATH = 0, 1, 3
SERVER_WAS_DENIED, NO_FILE, NOT_DIRECTORY, ALREADY_EXISTS = 9, 15, 16, 17
S_IFDIR, S_IFMT = 0o040000, 0o170000


@dataclass
class Jail:
    root: Path
    canary: Canary
    server: LoopbackServer
    listed: set[bytes] = field(default_factory=set)
    read: list[bytes] = field(default_factory=list)

    @property
    def client(self) -> Client:
        return self.server.client

    def listdir(self, path: str | bytes) -> list[bytes]:
        names = self.client.listdir(path)
        self.listed.update(names)
        return names

    def read_all(self, handle: int) -> bytes:
        done, data = self.client.read(handle, 0, 1 << 16)
        assert done.ok, done
        self.read.append(data)
        return data

    def check(self) -> None:
        """The canary is untouched, unlisted and unread; the driver still serves."""
        self.canary.assert_intact()
        assert not self.listed & self.canary.names(), self.listed & self.canary.names()
        assert all(CANARY_TOKEN not in data for data in self.read)
        assert_share_clean(self.client)
        assert_no_extra_completions(self.client)
        assert self.server.process is not None and self.server.process.poll() is None


def _symlink(root: Path, name: str, target: str | Path) -> None:
    os.symlink(target, root / name)


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Canary, LoopbackServer]]:
    base = tmp_path_factory.mktemp("confinement")
    canary = Canary(base / "canary")
    root = base / "root"
    root.mkdir()
    with LoopbackServer(root=root, directory=base / "loop", data_size=4 << 20) as server:
        assert server.client.initialise().ok
        yield root, canary, server


@pytest.fixture
def jail(served: tuple[Path, Canary, LoopbackServer]) -> Iterator[Jail]:
    """The served root, rebuilt for each test; the canary is checked after each test."""
    root, canary, server = served
    _empty(root)
    (root / "inside.txt").write_bytes(b"inside data\n")
    (root / "sub").mkdir()
    _symlink(root, "link_file_abs", canary.file)
    _symlink(root, "link_file_rel", "../canary/canary_secret.txt")
    _symlink(root, "link_dir_abs", canary.directory)
    _symlink(root, "link_dir_rel", "../canary/canary_dir")
    _symlink(root, "link_up", "../../../../../../..")
    _symlink(root, "link_root", "/")
    _symlink(root, "link_proc", "/proc/self/root")
    _symlink(root, "loop_a", "loop_b")
    _symlink(root, "loop_b", "loop_a")
    _symlink(root, "loop_self", "loop_self")
    _symlink(root / "sub", "link_up2", "../../canary")
    j = Jail(root, canary, server)
    yield j
    j.check()
    server.client.share[:] = bytes(len(server.client.share))


READ_PATHS = [
    "../canary/canary_secret.txt",
    "/../../canary/canary_secret.txt",
    "/../../../../../../../../../../{canary}/canary_secret.txt",
    "{canary}/canary_secret.txt",
    "link_file_abs",
    "link_file_rel",
    "link_dir_abs/canary_inner.txt",
    "link_dir_rel/canary_inner.txt",
    "link_up/{canary}/canary_secret.txt",
    "link_root/{canary}/canary_secret.txt",
    "link_proc/{canary}/canary_secret.txt",
    "sub/link_up2/canary_secret.txt",
    "sub/../../canary/canary_dir/canary_inner.txt",
]


def _p(jail: Jail, template: str) -> bytes:
    return template.replace("{canary}", str(jail.canary.base).lstrip("/")).encode()


def test_stat_and_open_never_reach_outside(jail: Jail) -> None:
    client = jail.client
    for template in READ_PATHS:
        path = _p(jail, template)
        done, _ = client.stat(path)
        assert done.status == NO_FILE, (path, done)
        for flags in (0, 1, 2):
            opened = client.open(path, flags)
            assert (opened.status, opened.data) == (NO_FILE, 0), (path, flags, opened)
        assert client.opendir(path).status in (NO_FILE, NOT_DIRECTORY), path


@pytest.mark.parametrize(
    "template", ["..", "/..", "../..", "link_up", "link_root", "sub/../..", "link_up/link_up"]
)
def test_paths_above_the_root_stay_at_the_root(jail: Jail, template: str) -> None:
    path = _p(jail, template)
    root_stat = os.stat(jail.root)
    done, record = jail.client.stat(path)
    assert done.status == SUCCESS, done
    assert record is not None and record["ino"] == root_stat.st_ino
    assert sorted(jail.listdir(path)) == sorted(os.fsencode(n) for n in os.listdir(jail.root))


@pytest.mark.parametrize("template", ["link_dir_abs", "link_dir_rel", "{canary}", "../canary"])
def test_directory_links_out_do_not_list_outside(jail: Jail, template: str) -> None:
    assert jail.client.opendir(_p(jail, template)).status == NO_FILE


def test_stat_never_reports_an_outside_inode(jail: Jail) -> None:
    outside = {ino for _, ino in jail.canary.inodes()}
    for name in os.listdir(jail.root):
        done, record = jail.client.stat(name)
        if done.ok:
            assert record is not None and record["ino"] not in outside, name


@pytest.mark.parametrize("name", ["loop_a", "loop_b", "loop_self", "loop_a/x", "loop_self/a/b"])
def test_symlink_loops_are_invalid_path(jail: Jail, name: str) -> None:
    client = jail.client
    assert client.stat(name)[0].status == INVALID_PATH
    assert client.open(name, 2 | 4).status == INVALID_PATH
    assert client.opendir(name).status == INVALID_PATH
    if "/" in name:
        assert client.mkdir(name).status == INVALID_PATH
        assert client.remove(name).status == INVALID_PATH


CREATE_PATHS = [
    "../canary/planted.txt",
    "{canary}/planted.txt",
    "link_dir_abs/planted.txt",
    "link_dir_rel/planted.txt",
    "link_up/{canary}/planted.txt",
    "sub/link_up2/planted.txt",
    "link_file_abs",
    "link_file_rel",
]


@pytest.mark.parametrize("template", CREATE_PATHS)
def test_create_never_lands_outside(jail: Jail, template: str) -> None:
    path = _p(jail, template)
    client = jail.client
    assert client.open(path, 2 | 4).status == NO_FILE, path
    assert client.open(path, 1 | 4).status == NO_FILE, path
    if not template.startswith("link_file"):
        assert client.mkdir(path).status == NO_FILE, path


def test_absolute_link_target_is_created_inside_the_root(jail: Jail) -> None:
    """A dangling-inside absolute link: creating through it makes the file under the root."""
    inside_twin = jail.root / str(jail.canary.base).lstrip("/")
    inside_twin.mkdir(parents=True)
    opened = jail.client.open("link_file_abs", 2 | 4)
    assert opened.ok, opened
    assert jail.client.write(opened.data, 0, b"written through the link").ok
    assert jail.client.close(opened.data).ok
    assert (inside_twin / "canary_secret.txt").read_bytes() == b"written through the link"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("../outside_made", SUCCESS),  # ".." at the root stays at the root: made inside
        ("/../../outside_made", SUCCESS),
        ("link_up/outside_made", SUCCESS),
        ("link_dir_abs/evil", NO_FILE),
        ("link_dir_rel/evil", NO_FILE),
        ("../canary/evil", NO_FILE),
        ("sub/link_up2/evil", NO_FILE),
        ("..", ALREADY_EXISTS),
        ("link_up", ALREADY_EXISTS),
    ],
)
def test_mkdir_outside_is_made_inside_or_refused(jail: Jail, template: str, expected: int) -> None:
    assert jail.client.mkdir(_p(jail, template)).status == expected
    if expected == SUCCESS:
        assert (jail.root / "outside_made").is_dir()
        assert not (jail.root.parent / "outside_made").exists()


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("link_dir_abs/canary_inner.txt", NO_FILE),
        ("link_dir_rel/canary_inner.txt", NO_FILE),
        ("../canary/canary_secret.txt", NO_FILE),
        ("{canary}/canary_secret.txt", NO_FILE),
        ("sub/link_up2/canary_secret.txt", NO_FILE),
        ("link_up/{canary}/canary_secret.txt", NO_FILE),
        ("..", SERVER_WAS_DENIED),
        ("/..", SERVER_WAS_DENIED),
    ],
)
def test_unlink_outside_is_refused(jail: Jail, template: str, expected: int) -> None:
    assert jail.client.remove(_p(jail, template)).status == expected


@pytest.mark.parametrize("name", ["link_file_abs", "link_dir_abs", "link_file_rel", "link_up"])
def test_unlink_of_a_link_removes_the_link_only(jail: Jail, name: str) -> None:
    assert jail.client.remove(name).status == SUCCESS
    assert not os.path.lexists(jail.root / name)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("link_dir_abs/canary_empty", NO_FILE),
        ("../canary/canary_dir/canary_empty", NO_FILE),
        ("{canary}/canary_dir/canary_empty", NO_FILE),
        ("sub/link_up2/canary_dir/canary_empty", NO_FILE),
        ("link_dir_abs", NOT_DIRECTORY),
        ("link_up", NOT_DIRECTORY),
        ("..", SERVER_WAS_DENIED),
        ("/../..", SERVER_WAS_DENIED),
        ("sub/..", SERVER_WAS_DENIED),
    ],
)
def test_rmdir_outside_is_refused(jail: Jail, template: str, expected: int) -> None:
    assert jail.client.rmdir(_p(jail, template)).status == expected
    assert jail.root.is_dir()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("link_dir_abs/canary_inner.txt", "stolen.txt", NO_FILE),
        ("../canary/canary_secret.txt", "stolen.txt", NO_FILE),
        ("sub/link_up2/canary_secret.txt", "stolen.txt", NO_FILE),
        ("inside.txt", "link_dir_abs/planted.txt", NO_FILE),
        ("inside.txt", "../canary/planted.txt", NO_FILE),
        ("inside.txt", "{canary}/planted.txt", NO_FILE),
        ("inside.txt", "sub/link_up2/planted.txt", NO_FILE),
        ("..", "moved_root", SERVER_WAS_DENIED),
        ("sub", "..", SERVER_WAS_DENIED),
        ("link_dir_abs", "moved_link", SUCCESS),  # the link itself moves
        ("inside.txt", "link_file_abs", SUCCESS),  # replaces the link, not its target
    ],
)
def test_rename_never_crosses_the_root(jail: Jail, old: str, new: str, expected: int) -> None:
    assert jail.client.rename(_p(jail, old), _p(jail, new)).status == expected
    assert (jail.root / "sub").is_dir()


def test_fifo_and_directory_are_not_opened_as_files(jail: Jail) -> None:
    os.mkfifo(jail.root / "fifo")
    for flags in (0, 1, 2):
        assert jail.client.open("fifo", flags).status == ERROR
    assert jail.client.open("sub", 0).status == ERROR
    assert jail.client.stat("/")[0].ok


def test_directory_swapped_for_a_symlink_between_commands(jail: Jail) -> None:
    client = jail.client
    assert client.mkdir("d").ok
    opened = client.open("d/f", 2 | 4)
    assert opened.ok
    assert client.write(opened.data, 0, b"mine").ok
    dir_handle = client.opendir("d")
    assert dir_handle.ok
    os.rename(jail.root / "d", jail.root / "d_old")
    os.symlink(jail.canary.directory, jail.root / "d")

    assert client.stat("d/canary_inner.txt")[0].status == NO_FILE
    assert client.open("d/canary_inner.txt", 2).status == NO_FILE
    assert client.open("d/new.txt", 2 | 4).status == NO_FILE
    assert client.opendir("d").status == NO_FILE
    assert client.remove("d/canary_inner.txt").status == NO_FILE
    assert client.mkdir("d/x").status == NO_FILE
    assert client.rmdir("d/canary_empty").status == NO_FILE
    assert client.rename("d/canary_inner.txt", "got.txt").status == NO_FILE
    assert client.rename("d_old/f", "d/f").status == NO_FILE
    # Handles opened before the swap keep reaching what they were opened on.
    assert jail.read_all(opened.data) == b"mine"
    assert client.rewinddir(dir_handle.data).ok
    done, name = client.readdir(dir_handle.data)
    assert (done.status, name) == (SUCCESS, b"f")
    jail.listed.add(name)
    assert client.closedir(dir_handle.data).ok
    assert client.close(opened.data).ok


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(AT_FDCWD, bytes(a), AT_FDCWD, bytes(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _flipper(root: Path, target: Path, stop: threading.Event) -> int:
    """Keep atomically exchanging root/race (a real directory) with a symlink pointing out."""
    race, link = root / "race", root / "race_link"
    race.mkdir()
    (race / "f").write_bytes(b"inside race file")
    os.symlink(target, link)
    flips = 0
    while not stop.is_set():
        _exchange(race, link)
        flips += 1
    return flips


def test_racing_directory_symlink_swap(jail: Jail) -> None:
    """While another process keeps swapping a directory for a symlink out, the client hammers it."""
    client = jail.client
    stop = threading.Event()
    flips: list[int] = []
    thread = threading.Thread(
        target=lambda: flips.append(_flipper(jail.root, jail.canary.directory, stop))
    )
    thread.start()
    names = [
        b"race/canary_inner.txt",
        b"race/canary_empty",
        b"race/f",
        b"race/new.txt",
        b"race",
    ]
    paths = {name: client.put(name) for name in names}
    out = client.reserve(0x8000)
    stolen = client.put(b"stolen.txt")
    next_id = 1 << 50
    opened: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            batch: list[bytes] = []
            kinds: dict[int, Command] = {}

            for name, path in paths.items():
                wanted = [
                    (Command.STAT, {"path": path, "buf": out}),
                    (Command.FILE_OPEN, {"path": path, "flags": 0}),
                    (Command.FILE_OPEN, {"path": path, "flags": 2}),
                    (Command.DIR_OPEN, {"path": path}),
                ]
                if name == b"race/new.txt":
                    wanted.append((Command.FILE_OPEN, {"path": path, "flags": 2 | 4}))
                    wanted.append((Command.DIR_CREATE, {"path": path}))
                if name != b"race":
                    wanted.append((Command.FILE_REMOVE, {"path": path}))
                    wanted.append((Command.DIR_REMOVE, {"path": path}))
                    wanted.append((Command.RENAME, {"old_path": path, "new_path": stolen}))
                for cmd, fields in wanted:
                    batch.append(message(next_id, cmd, params(cmd, **fields)))
                    kinds[next_id] = cmd
                    next_id += 1
            done = wait_all(client, send_many(client, batch))
            for cmd_id, cmd in kinds.items():
                if done[cmd_id].ok and cmd in (Command.FILE_OPEN, Command.DIR_OPEN):
                    opened.append((cmd, done[cmd_id].data))
            while opened:
                cmd, handle = opened.pop()
                if cmd == Command.FILE_OPEN:
                    jail.read_all(handle)
                    assert client.close(handle).ok
                else:
                    while True:
                        got, name = client.readdir(handle)
                        if not got.ok or name is None:
                            break
                        jail.listed.add(name)
                    assert client.closedir(handle).ok
    finally:
        stop.set()
        thread.join()
    assert flips and flips[0] > 100, "the race did not run"
    assert not (jail.root.parent / "stolen.txt").exists()


def test_many_dotdots_and_slashes(jail: Jail) -> None:
    path = b"/".join([b".."] * 1000) + b"/inside.txt"
    assert len(path) <= 4095
    opened = jail.client.open(path, 0)
    assert opened.ok
    assert jail.read_all(opened.data) == b"inside data\n"
    assert jail.client.close(opened.data).ok
    assert jail.client.stat(b"/" * 4000 + b"inside.txt")[0].ok
