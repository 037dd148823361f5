"""Layouts: every schema round-trips, sizes match the protocol, the fast path equals the schemas."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmfs import wire
from vmfs.wire import Command, Status

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)

# Sizes and offsets as the protocol states them (docs/protocol.md "Messages"), written out
# independently of wire.py.
PARAM_LAYOUT = {
    Command.INITIALISE: "",
    Command.DEINITIALISE: "",
    Command.FILE_OPEN: "<QQQ",
    Command.FILE_CLOSE: "<Q",
    Command.STAT: "<QQQQ",
    Command.FILE_READ: "<QQQQ",
    Command.FILE_WRITE: "<QQQQ",
    Command.FILE_SIZE: "<Q",
    Command.RENAME: "<QQQQ",
    Command.FILE_REMOVE: "<QQ",
    Command.FILE_TRUNCATE: "<QQ",
    Command.DIR_CREATE: "<QQ",
    Command.DIR_REMOVE: "<QQ",
    Command.DIR_OPEN: "<QQ",
    Command.DIR_CLOSE: "<Q",
    Command.FILE_SYNC: "<Q",
    Command.DIR_READ: "<QQQ",
    Command.DIR_SEEK: "<Qq",
    Command.DIR_TELL: "<Q",
    Command.DIR_REWIND: "<Q",
}


def test_constants_match_the_protocol() -> None:
    assert wire.QUEUE_REGION_SIZE == 0x8000
    assert wire.QueueRegion.sizeof() == 0x8000
    assert wire.CommandMessage.sizeof() == 64
    assert wire.CompletionMessage.sizeof() == 64
    assert wire.StatRecord.sizeof() == 136
    assert wire.Buffer.sizeof() == 16
    assert wire.ConfigPage.sizeof() == 32
    assert len(Command) == 20 and len(Status) == 19
    assert [s.value for s in Status] == list(range(19))
    assert wire.slot_offset(0) == 64 and wire.slot_offset(510) == 64 + 510 * 64
    assert wire.slot_offset(511) == 64
    assert wire.slot_offset(2**64 - 1) == 64 + ((2**64 - 1) % 511) * 64


@pytest.mark.parametrize("cmd", list(Command))
def test_param_schema_sizes(cmd: Command) -> None:
    assert wire.PARAMS[cmd].sizeof() == struct.calcsize(PARAM_LAYOUT[cmd] or "<")
    assert wire.PARAMS[cmd].sizeof() <= wire.PARAMS_SIZE


@pytest.mark.parametrize("cmd", list(Command))
@given(words=st.lists(u64, min_size=6, max_size=6), loc=i64, cmd_id=u64)
def test_fast_decoder_equals_schema(cmd: Command, words: list[int], loc: int, cmd_id: int) -> None:
    """The hot path's struct decoding gives exactly what the construct schema parses."""
    params = struct.pack("<6Q", *words)
    if cmd == Command.DIR_SEEK:
        params = struct.pack("<Qq", words[0], loc) + params[16:]
    message = wire.build_command(cmd_id, cmd, params)
    parsed = wire.CommandMessage.parse(message)
    assert (parsed.id, parsed.type) == wire.MESSAGE_HEADER.unpack_from(message, 0)
    schema = wire.PARAMS[cmd].parse(parsed.params)
    flat = []
    for name, kind in wire.PARAM_FIELDS[cmd]:
        value = schema[name]
        flat.extend([value.offset, value.size] if kind == wire.BUFFER else [value])
    assert tuple(flat) == wire.FAST_PARAMS[cmd].unpack_from(message, 16)
    assert len(flat) == len(wire.flat_names(cmd))


@given(cmd=st.sampled_from(list(Command)), data=st.data())
def test_params_round_trip(cmd: Command, data: st.DataObject) -> None:
    fields = {}
    for name, kind in wire.PARAM_FIELDS[cmd]:
        if kind == wire.BUFFER:
            fields[name] = {"offset": data.draw(u64), "size": data.draw(u64)}
        else:
            fields[name] = data.draw(i64 if kind == wire.I64 else u64)
    built = wire.build_params(cmd, **fields)
    assert len(built) == 48
    parsed = wire.PARAMS[cmd].parse(built)
    for name, value in fields.items():
        got = parsed[name]
        if isinstance(value, dict):
            assert (got.offset, got.size) == (value["offset"], value["size"])
        else:
            assert got == value


@given(cmd_id=u64, status=st.integers(0, 18), data=u64)
def test_completion_round_trip_and_fast_path(cmd_id: int, status: int, data: int) -> None:
    built = wire.CompletionMessage.build({"id": cmd_id, "status": status, "data": data})
    assert len(built) == 64 and built[24:] == bytes(40)
    assert wire.COMPLETION_FAST.unpack_from(built, 0) == (cmd_id, status, data)
    assert built[:24] == struct.pack("<QQQ", cmd_id, status, data)


@given(values=st.lists(u64, min_size=17, max_size=17))
def test_stat_record_round_trip(values: list[int]) -> None:
    record = dict(zip(wire.STAT_FIELDS, values, strict=True))
    built = wire.StatRecord.build(record)
    assert built == struct.pack("<17Q", *values) == wire.STAT_FAST.pack(*values)
    parsed = wire.StatRecord.parse(built)
    assert {name: parsed[name] for name in wire.STAT_FIELDS} == record
    assert wire.STAT_FIELDS.index("used") * 8 == 128 and wire.STAT_FIELDS.index("mtime") * 8 == 88


@pytest.mark.parametrize("cmd", sorted(wire.COMPLETION_DATA))
def test_completion_data_structs(cmd: Command) -> None:
    assert wire.COMPLETION_DATA[cmd].sizeof() == 8
    assert wire.COMPLETION_DATA[cmd].build({wire.COMPLETION_DATA_FIELD[cmd]: 7}) == (
        struct.pack("<Q", 7)
    )


@given(head=st.integers(0, 2**64 - 1024), pushes=st.integers(0, 600))
def test_queue_view_push_pop_with_free_running_indices(head: int, pushes: int) -> None:
    """Indices are free-running u64; slot = index mod 511 on the full value.

    docs/protocol.md "Queue layout".

    2^64 is not a multiple of 511, so a window straddling the u64 wrap would map two live
    indices to one slot; the protocol defines it so, and no queue lives that long.
    """
    region = memoryview(bytearray(wire.QUEUE_REGION_SIZE))
    queue = wire.QueueView(region)
    queue.publish_head(head)
    queue.publish_tail(head)
    accepted = sum(queue.push(struct.pack("<Q", i).ljust(64, b"\0")) for i in range(pushes))
    assert accepted == min(pushes, 511)
    assert queue.length() == accepted
    for i in range(accepted):
        message = queue.pop()
        assert message is not None and struct.unpack_from("<Q", message)[0] == i
    assert queue.pop() is None and queue.length() == 0
    assert queue.head == (head + accepted) % 2**64


@given(offset=u64, size=u64, share=st.integers(1, 2**40))
def test_buffer_rule(offset: int, size: int, share: int) -> None:
    expected = size > 0 and offset < share and offset + size <= share
    assert wire.buffer_ok(offset, size, share) == expected


def test_config_page_layout() -> None:
    page = wire.ConfigPage.build(
        {"command_size": 1, "completion_size": 2, "data_size": 3, "fault_size": 4}
    )
    assert page == struct.pack("<4Q", 1, 2, 3, 4) == wire.CONFIG_FAST.pack(1, 2, 3, 4)


def test_every_lazy_schema_name_is_built() -> None:
    """`wire.X` for each schema name gives the built schema; other names stay missing."""
    assert set(wire.schemas()) == wire.SCHEMA_NAMES
    for name in wire.SCHEMA_NAMES:
        assert getattr(wire, name) is wire.schemas()[name]
    with pytest.raises(AttributeError):
        _ = wire.NoSuchSchema


def test_field_offsets_match_the_schemas() -> None:
    """The offsets the native loop reads and writes are where the schemas put each field."""
    message = wire.CommandMessage.build({"id": 1, "type": 2, "params": bytes(range(48))})
    assert int.from_bytes(message[wire.COMMAND_ID_OFFSET :][:8], "little") == 1
    assert int.from_bytes(message[wire.COMMAND_TYPE_OFFSET :][:8], "little") == 2
    assert message[wire.COMMAND_PARAMS_OFFSET :] == bytes(range(48))
    done = wire.CompletionMessage.build({"id": 3, "status": 4, "data": 5})
    for offset, value in (
        (wire.COMPLETION_ID_OFFSET, 3),
        (wire.COMPLETION_STATUS_OFFSET, 4),
        (wire.COMPLETION_DATA_OFFSET, 5),
    ):
        assert int.from_bytes(done[offset : offset + 8], "little") == value
