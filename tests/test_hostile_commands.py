"""Exactly one completion per command, carrying its id, whatever the 64 bytes in the slot hold.

The expected statuses come from docs/protocol.md ("Rules every command follows", and "The
commands" for a type of 20 or more);
the stateful test keeps its own model of the files it made and checks every valid command's
result against it while garbage is mixed into the same queue.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest
from hostile_helpers import (
    NUM_COMMANDS,
    U64,
    assert_no_extra_completions,
    check_completion_shape,
    hypothesis_profile,
    message,
    params,
    send_many,
    wait_all,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from vmfs.client import Client, LoopbackServer
from vmfs.wire import Command

SUCCESS, ERROR, INVALID_BUFFER, INVALID_PATH, INVALID_FD = 0, 1, 2, 3, 4
INVALID_WRITE, INVALID_READ, INVALID_COMMAND = 10, 11, 13
NO_FILE, ALREADY_EXISTS, NOT_EMPTY = 15, 17, 18
S_IFDIR, S_IFREG, S_IFMT = 0o040000, 0o100000, 0o170000

PATH_COMMANDS = (
    Command.FILE_OPEN,
    Command.STAT,
    Command.FILE_REMOVE,
    Command.DIR_CREATE,
    Command.DIR_REMOVE,
    Command.DIR_OPEN,
)


def stat_root_ok(client: Client) -> None:
    done, record = client.stat("/")
    assert done.status == SUCCESS, done
    assert record is not None and record["mode"] & S_IFMT == S_IFDIR


# -- fixed attacks ----------------------------------------------------------------------------


def test_invalid_types_get_one_invalid_command_each(client: Client) -> None:
    cases = [(77, 20), (78, U64), (0, 21), (U64, 1 << 63), (1 << 63, 1 << 31), (5, 255)]
    ids = send_many(client, [message(i, t, b"\xff" * 48) for i, t in cases])
    done = wait_all(client, ids)
    for cmd_id, _ in cases:
        assert done[cmd_id].id == cmd_id
        assert (done[cmd_id].status, done[cmd_id].data) == (INVALID_COMMAND, 0)
    assert_no_extra_completions(client)
    stat_root_ok(client)


def test_invalid_type_wins_before_initialise(server: LoopbackServer) -> None:
    client = server.client
    ids = send_many(client, [message(900 + t, t) for t in (20, 2**40, U64)])
    done = wait_all(client, ids)
    assert {d.status for d in done.values()} == {INVALID_COMMAND}
    assert_no_extra_completions(client)


def test_every_command_before_initialise_is_error(server: LoopbackServer) -> None:
    client = server.client
    path = client.put(b"/")
    out = client.reserve(4096)
    body = struct.pack("<QQQQ", path["offset"], 1, out["offset"], 4096)
    ids = send_many(client, [message(1000 + t, t, body) for t in range(2, NUM_COMMANDS)])
    done = wait_all(client, ids)
    for t in range(2, NUM_COMMANDS):
        assert (done[1000 + t].status, done[1000 + t].data) == (ERROR, 0), (t, done[1000 + t])
    assert_no_extra_completions(client)
    assert client.initialise().ok
    stat_root_ok(client)


def test_initialise_again_and_again_answers_each_once(client: Client) -> None:
    ids = send_many(client, [message(3000 + i, Command.INITIALISE, b"\xaa" * 48) for i in range(8)])
    done = wait_all(client, ids)
    assert [done[i].status for i in ids] == [SUCCESS] * 8
    assert_no_extra_completions(client)
    stat_root_ok(client)


def test_deinitialise_then_commands_are_error_until_initialise(client: Client) -> None:
    opened = client.open("/f", 2 | 4)
    assert opened.ok
    ids = send_many(
        client,
        [
            message(10, Command.DEINITIALISE),
            message(11, Command.DEINITIALISE),
            message(12, Command.FILE_SIZE, struct.pack("<Q", opened.data)),
            message(13, Command.INITIALISE),
            message(14, Command.FILE_SIZE, struct.pack("<Q", opened.data)),
        ],
    )
    done = wait_all(client, ids)
    assert [done[i].status for i in ids] == [SUCCESS, SUCCESS, ERROR, SUCCESS, INVALID_FD]
    assert_no_extra_completions(client)


def _garbage_words(rng: random.Random, share_size: int) -> bytes:
    pool = [0, 1, 7, 255, 256, 4095, 4096, 1 << 31, 1 << 63, U64, share_size - 1, share_size]
    return b"".join(
        struct.pack("<Q", rng.choice(pool) if rng.random() < 0.7 else rng.getrandbits(64))
        for _ in range(6)
    )


def test_garbage_parameters_for_every_type(client: Client) -> None:
    """Every command type with hostile parameter words: one well-formed completion each."""
    rng = random.Random(4)
    share_size = len(client.share)
    bodies = [b"\0" * 48, b"\xff" * 48]
    bodies += [_garbage_words(rng, share_size) for _ in range(12)]
    messages, types = [], {}
    next_id = 1 << 40
    for cmd_type in [*range(2, NUM_COMMANDS), 20, 1 << 40]:
        for body in bodies:
            messages.append(message(next_id, cmd_type, body))
            types[next_id] = cmd_type
            next_id += 1
    done = wait_all(client, send_many(client, messages))
    for cmd_id, completion in done.items():
        assert completion.id == cmd_id
        check_completion_shape(completion, types[cmd_id])
    assert_no_extra_completions(client)
    assert client.initialise().ok
    stat_root_ok(client)


@pytest.mark.parametrize("cmd", PATH_COMMANDS, ids=lambda c: c.name)
def test_unusable_paths_are_invalid_path(client: Client, cmd: Command) -> None:
    share_size = len(client.share)
    long_path = client.put(b"a/" * 2100)  # 4200 bytes
    exact_limit = client.put(b"/" + b"b" * 4095)  # 4096 bytes: one more than allowed
    long_name = client.put(b"/" + b"c" * 256)
    nul_first = client.put(b"\0/etc/passwd")
    all_nul = client.put(b"\0" * 64)
    huge = client.put(b"d" * 0x20000)
    out = client.reserve(4096)
    buffers = [
        (0, 0),  # zero length
        (long_path["offset"], long_path["size"]),
        (exact_limit["offset"], exact_limit["size"]),
        (long_name["offset"], long_name["size"]),
        (nul_first["offset"], nul_first["size"]),
        (all_nul["offset"], all_nul["size"]),
        (huge["offset"], huge["size"]),
        (share_size, 1),
        (share_size - 2, 3),
        (U64 - 7, 16),
        (8, U64),
    ]
    messages = []
    for n, (off, size) in enumerate(buffers):
        if cmd == Command.FILE_OPEN:
            body = struct.pack("<QQQ", off, size, 2 | 4)
        elif cmd == Command.STAT:
            body = struct.pack("<QQQQ", off, size, out["offset"], 4096)
        else:
            body = struct.pack("<QQ", off, size)
        messages.append(message(500 + n, cmd, body))
    done = wait_all(client, send_many(client, messages))
    for n in range(len(buffers)):
        assert (done[500 + n].status, done[500 + n].data) == (INVALID_PATH, 0), buffers[n]
    assert_no_extra_completions(client)
    assert client.listdir("/") == []


def test_rename_with_unusable_path_on_either_side(client: Client) -> None:
    good = client.put(b"/exists")
    assert client.mkdir("/exists").ok
    bad = [(0, 0), (len(client.share), 4), (client.put(b"\0x")["offset"], 2)]
    messages = []
    for n, (off, size) in enumerate(bad):
        messages.append(
            message(600 + n, Command.RENAME, struct.pack("<QQQQ", off, size, good["offset"], 7))
        )
        messages.append(
            message(700 + n, Command.RENAME, struct.pack("<QQQQ", good["offset"], 7, off, size))
        )
    done = wait_all(client, send_many(client, messages))
    assert {d.status for d in done.values()} == {INVALID_PATH}
    assert client.listdir("/") == [b"exists"]
    assert_no_extra_completions(client)


def test_path_ends_at_first_nul(client: Client) -> None:
    assert client.open(b"/real\0/../../../etc/passwd", 2 | 4).ok
    assert client.listdir("/") == [b"real"]


def test_ids_are_echoed_verbatim(client: Client) -> None:
    ids = [0, 1, 510, 511, 512, 1 << 32, (1 << 63) - 1, 1 << 63, U64 - 1, U64]
    path = client.put(b"/")
    out = client.reserve(4096)
    body = params(Command.STAT, path=path, buf=out)
    done = wait_all(client, send_many(client, [message(i, Command.STAT, body) for i in ids]))
    for cmd_id in ids:
        assert (done[cmd_id].id, done[cmd_id].status) == (cmd_id, SUCCESS)
    assert_no_extra_completions(client)


# -- random 64-byte messages ------------------------------------------------------------------

WORDS = st.one_of(
    st.sampled_from([0, 1, 255, 256, 4095, 4096, 0x8000, 1 << 31, 1 << 63, U64, 0x4000000]),
    st.integers(0, U64),
)
TYPES = st.one_of(st.integers(0, NUM_COMMANDS + 2), st.integers(0, U64))
RAW_MESSAGE = st.one_of(
    st.binary(min_size=64, max_size=64),
    st.builds(
        lambda t, ws: struct.pack("<8Q", 0, t, *ws), TYPES, st.lists(WORDS, min_size=6, max_size=6)
    ),
)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    base = tmp_path_factory.mktemp("hostile-commands")
    with LoopbackServer(root=base / "root", directory=base / "loop") as srv:
        assert srv.client.initialise().ok
        yield srv


_next_id = iter(range(1 << 48, 1 << 60))


@hypothesis_profile()
@given(batch=st.lists(RAW_MESSAGE, min_size=1, max_size=120))
def test_any_64_bytes_get_exactly_one_completion(
    shared_server: LoopbackServer, batch: list[bytes]
) -> None:
    client = shared_server.client
    messages, types = [], {}
    for raw in batch:
        cmd_id = next(_next_id)
        types[cmd_id] = struct.unpack_from("<Q", raw, 8)[0]
        messages.append(struct.pack("<Q", cmd_id) + raw[8:])
    done = wait_all(client, send_many(client, messages))
    for cmd_id, completion in done.items():
        assert completion.id == cmd_id
        check_completion_shape(completion, types[cmd_id])
    assert_no_extra_completions(client)
    assert client.initialise().ok  # garbage may have held a DEINITIALISE
    stat_root_ok(client)


# -- the stateful test: garbage mixed with valid commands checked against a model --------------

ZERO_SPAN = 1 << 20  # the share units the client's own commands use
GARBAGE_AREA = 32 << 20  # random bytes the garbage can point at
FILE_NAMES = ("a", "b", "c", "d0/a", "d0/b")
HANDLE_COMMANDS = frozenset(
    {3, 5, 6, 7, 10, 14, 15, 16, 17, 18, 19}
)  # fd in the first parameter word


class HostileMix(RuleBasedStateMachine):
    """Valid commands on a private directory, interleaved with batches of garbage."""

    server: LoopbackServer
    run_number = 0
    garbage_id = 1 << 32  # distinct over all runs: a late duplicate would be caught later

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.client = self.server.client
        HostileMix.run_number += 1
        self.base = f"/run{HostileMix.run_number}"
        self.objects: dict[int, bytearray] = {}  # file object id -> content
        self.names: dict[str, int] = {}  # name (relative to base) -> file object id
        self.dirs: set[str] = set()
        self.open: dict[int, tuple[int, int]] = {}  # handle -> (object id, access mode)
        self.stale: list[int] = []
        self.next_object = 0
        self.initialised = True

    @initialize()
    def make_base(self) -> None:
        done = self.client.mkdir(self.base)
        if done.status == ERROR:  # an earlier run's garbage left the driver uninitialised
            assert self.client.initialise().ok
            done = self.client.mkdir(self.base)
        assert done.ok, done

    def p(self, name: str) -> str:
        return f"{self.base}/{name}"

    def parent_exists(self, name: str) -> bool:
        return "/" not in name or name.rsplit("/", 1)[0] in self.dirs

    # -- files --

    @rule(
        target=handles,
        name=st.sampled_from(FILE_NAMES),
        create=st.booleans(),
        access=st.sampled_from([0, 1, 2]),
    )
    def open_file(self, name: str, create: bool, access: int) -> int:
        done = self.client.open(self.p(name), access | (4 if create else 0))
        if name in self.names:
            expected = SUCCESS
        elif create and self.parent_exists(name):
            expected = SUCCESS
            self.names[name] = self.next_object
            self.objects[self.next_object] = bytearray()
            self.next_object += 1
        else:
            expected = NO_FILE
        assert done.status == expected, (name, create, access, done)
        if done.status != SUCCESS:
            assert done.data == 0
            return -1
        assert done.data < 1 << 31
        assert done.data not in self.open and done.data not in self.stale
        self.open[done.data] = (self.names[name], access)
        return done.data

    @rule(handle=handles, offset=st.integers(0, 3000), data=st.binary(max_size=2500))
    def write(self, handle: int, offset: int, data: bytes) -> None:
        done = self.client.write(max(handle, 0), offset, data)
        if not data:
            assert done.status == INVALID_BUFFER, done
            return
        if handle not in self.open:
            assert done.status == INVALID_FD, done
            return
        obj, access = self.open[handle]
        if access == 0:
            assert done.status == INVALID_WRITE, done
            return
        assert (done.status, done.data) == (SUCCESS, len(data)), done
        content = self.objects[obj]
        if len(content) < offset:
            content.extend(bytes(offset - len(content)))
        content[offset : offset + len(data)] = data

    @rule(handle=handles, offset=st.integers(0, 4000), size=st.integers(1, 4000))
    def read(self, handle: int, offset: int, size: int) -> None:
        done, data = self.client.read(max(handle, 0), offset, size)
        if handle not in self.open:
            assert done.status == INVALID_FD, done
            return
        obj, access = self.open[handle]
        if access == 1:
            assert done.status == INVALID_READ, done
            return
        assert done.status == SUCCESS, done
        assert data == bytes(self.objects[obj][offset : offset + size])

    @rule(handle=handles)
    def size(self, handle: int) -> None:
        done = self.client.size(max(handle, 0))
        if handle not in self.open:
            assert done.status == INVALID_FD, done
            return
        assert (done.status, done.data) == (SUCCESS, len(self.objects[self.open[handle][0]]))

    @rule(handle=handles, length=st.integers(0, 5000))
    def truncate(self, handle: int, length: int) -> None:
        done = self.client.truncate(max(handle, 0), length)
        if handle not in self.open:
            assert done.status == INVALID_FD, done
            return
        obj, access = self.open[handle]
        if access == 0:
            assert done.status == INVALID_WRITE, done
            return
        assert done.status == SUCCESS, done
        content = self.objects[obj]
        if length < len(content):
            del content[length:]
        else:
            content.extend(bytes(length - len(content)))

    @rule(handle=consumes(handles))
    def close(self, handle: int) -> None:
        done = self.client.close(max(handle, 0))
        if handle in self.open:
            assert done.status == SUCCESS, done
            del self.open[handle]
            self.stale.append(handle)
        else:
            assert done.status == INVALID_FD, done

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def use_stale_handle(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(self.stale))
        assert self.client.close(handle).status == INVALID_FD
        assert self.client.read(handle, 0, 16)[0].status == INVALID_FD
        assert self.client.closedir(handle).status == INVALID_FD

    # -- names --

    @rule(name=st.sampled_from((*FILE_NAMES, "d0")))
    def stat(self, name: str) -> None:
        done, record = self.client.stat(self.p(name))
        if name in self.names:
            assert done.status == SUCCESS and record is not None, done
            assert record["mode"] & S_IFMT == S_IFREG
            assert record["size"] == len(self.objects[self.names[name]])
        elif name in self.dirs:
            assert done.status == SUCCESS and record is not None, done
            assert record["mode"] & S_IFMT == S_IFDIR
        else:
            assert done.status == NO_FILE, done

    @rule(name=st.sampled_from((*FILE_NAMES, "d0")))
    def remove(self, name: str) -> None:
        done = self.client.remove(self.p(name))
        if name in self.names:
            assert done.status == SUCCESS, done
            del self.names[name]
        elif name in self.dirs:
            assert done.status == ERROR, done
        else:
            assert done.status == NO_FILE, done

    @rule()
    def mkdir(self) -> None:
        done = self.client.mkdir(self.p("d0"))
        if "d0" in self.dirs:
            assert done.status == ALREADY_EXISTS, done
        else:
            assert done.status == SUCCESS, done
            self.dirs.add("d0")

    @rule()
    def rmdir(self) -> None:
        done = self.client.rmdir(self.p("d0"))
        if "d0" not in self.dirs:
            assert done.status == NO_FILE, done
        elif any(n.startswith("d0/") for n in self.names):
            assert done.status == NOT_EMPTY, done
        else:
            assert done.status == SUCCESS, done
            self.dirs.discard("d0")

    @rule(old=st.sampled_from(FILE_NAMES), new=st.sampled_from(FILE_NAMES))
    def rename(self, old: str, new: str) -> None:
        done = self.client.rename(self.p(old), self.p(new))
        if old not in self.names or not self.parent_exists(new):
            assert done.status == NO_FILE, (old, new, done)
            return
        assert done.status == SUCCESS, (old, new, done)
        if old != new:
            self.names[new] = self.names.pop(old)

    @rule(where=st.sampled_from(["", "d0"]))
    def listdir(self, where: str) -> None:
        path = self.p(where) if where else self.base
        if where and where not in self.dirs:
            assert self.client.opendir(path).status == NO_FILE
            return
        prefix = f"{where}/" if where else ""
        expected = {n[len(prefix) :].encode() for n in self.names if n.startswith(prefix)}
        expected = {n for n in expected if b"/" not in n}
        if not where:
            expected |= {d.encode() for d in self.dirs}
        assert set(self.client.listdir(path)) == expected

    # -- garbage --

    @rule(
        batch=st.lists(RAW_MESSAGE, min_size=1, max_size=40),
        area=st.binary(min_size=1, max_size=512),
    )
    def garbage(self, batch: list[bytes], area: bytes) -> None:
        client = self.client
        client.share[:ZERO_SPAN] = bytes(ZERO_SPAN)
        client.share[GARBAGE_AREA : GARBAGE_AREA + len(area)] = area
        # The valid probe names "/": garbage that happens to point at its bytes can do no harm.
        probe_path = client.put(b"/")
        probe_out = client.reserve(4096)
        probe_id = HostileMix.garbage_id
        HostileMix.garbage_id += 1
        probe = params(Command.STAT, path=probe_path, buf=probe_out)
        messages = [message(probe_id, Command.STAT, probe)]
        types: dict[int, int] = {}
        for raw in batch:
            cmd_id = HostileMix.garbage_id
            HostileMix.garbage_id += 1
            cmd_type, fd = struct.unpack_from("<QQ", raw, 8)
            body = bytearray(raw[16:])
            if cmd_type in HANDLE_COMMANDS and fd in self.open:
                body[0:8] = struct.pack("<Q", fd ^ 0x40000)
            types[cmd_id] = cmd_type
            messages.append(message(cmd_id, cmd_type, bytes(body)))
        done = wait_all(client, send_many(client, messages))
        client.release(probe_path)
        client.release(probe_out)
        assert done[probe_id].status == (SUCCESS if self.initialised else ERROR)
        for cmd_id, cmd_type in types.items():
            check_completion_shape(done[cmd_id], cmd_type)
            if cmd_type == Command.DEINITIALISE:
                self.initialised = False
            elif cmd_type == Command.INITIALISE:
                self.initialised = True
        # Close what garbage opened, so the handle table cannot fill up across runs.
        for cmd_id, cmd_type in types.items():
            if done[cmd_id].status == SUCCESS and cmd_type in (2, 13):
                close = client.close if cmd_type == 2 else client.closedir
                assert close(done[cmd_id].data).status in (SUCCESS, INVALID_FD, ERROR)
        if any(t == Command.DEINITIALISE for t in types.values()):
            self.stale.extend(self.open)
            self.open.clear()
        if not self.initialised:
            assert client.initialise().ok
            self.initialised = True

    @invariant()
    def nothing_unclaimed(self) -> None:
        assert self.client.pending_completions() == {}

    def teardown(self) -> None:
        for handle in list(self.open):
            self.client.close(handle)


def test_garbage_mixed_with_valid_commands(shared_server: LoopbackServer) -> None:
    HostileMix.server = shared_server
    run_state_machine_as_test(HostileMix, settings=hypothesis_profile())
    assert shared_server.process is not None and shared_server.process.poll() is None
