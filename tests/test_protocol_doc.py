"""docs/protocol.md agrees with vmfs/wire.py (and paths.py's errno table), table by table.

wire.py is the one definition of every layout; the document repeats offsets only where a table
helps a reader, and these tests make any drift between the two fail.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Any

import pytest
from construct import Int64sl

from vmfs import wire
from vmfs.driver import paths
from vmfs.wire import Command, Status

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "protocol.md"
LINES = DOC.read_text().splitlines()


def table_under(heading: str) -> list[list[str]]:
    """The body rows (cells, backticks stripped) of the first table after `heading`."""
    start = LINES.index(heading)
    rows: list[list[str]] = []
    for line in LINES[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
        elif rows or line.startswith("#"):
            break
    assert len(rows) > 2, f"no table under {heading!r}"
    return rows[2:]


def field_offsets(schema: Any, start: int = 0) -> list[tuple[int, str]]:
    """(offset, name) of each field of a construct Struct; unnamed fields are "—"."""
    fields = []
    offset = start
    for sub in schema.subcons:
        fields.append((offset, sub.name or "—"))
        offset += sub.sizeof()
    return fields


def offsets_and_names(heading: str) -> list[tuple[int, str]]:
    return [(int(row[0]), row[1]) for row in table_under(heading)]


def test_config_page() -> None:
    assert offsets_and_names("### Config page") == field_offsets(wire.ConfigPage)


def test_queue_layout() -> None:
    assert [sub.name for sub in wire.QueueRegion.subcons] == ["header", "slots"]
    expected = [*field_offsets(wire.QueueHeader), (wire.QueueHeader.sizeof(), "slots")]
    assert offsets_and_names("### Queue layout") == expected
    assert wire.QueueHeader.sizeof() == wire.QUEUE_HEADER_SIZE
    assert wire.QueueRegion.sizeof() == wire.QUEUE_REGION_SIZE


def test_command_message() -> None:
    assert offsets_and_names("### Command message") == field_offsets(wire.CommandMessage)
    assert wire.CommandMessage.sizeof() == wire.MESSAGE_SIZE


def test_completion_message() -> None:
    meaningful = wire.CompletionMessage.subcon
    expected = [*field_offsets(meaningful), (meaningful.sizeof(), "—")]
    assert offsets_and_names("### Completion message") == expected
    assert wire.CompletionMessage.sizeof() == wire.MESSAGE_SIZE


def parameter_words(cmd: Command) -> list[str]:
    """`name @slot-offset` for every u64/i64 word of a command's parameters, from wire.py."""
    words = []
    offset = 16  # after id and type
    for sub in wire.PARAMS[cmd].subcons:
        if sub.subcon is wire.Buffer:
            words += [f"{sub.name}.offset @{offset}", f"{sub.name}.size @{offset + 8}"]
        else:
            words.append(f"{sub.name} @{offset}")
        offset += sub.sizeof()
    return words


def test_parameters_and_results() -> None:
    rows = table_under("### Parameters and results")
    assert [int(row[0]) for row in rows] == [cmd.value for cmd in Command]
    for number, name, params, data in rows:
        cmd = Command(int(number))
        assert name == cmd.name
        documented = [] if params == "—" else params.split(", ")
        assert documented == parameter_words(cmd), cmd.name
        assert (None if data == "—" else data) == wire.COMPLETION_DATA_FIELD.get(cmd), cmd.name


def test_only_dir_seek_has_a_signed_parameter() -> None:
    signed = {
        (cmd, sub.name) for cmd, schema in wire.PARAMS.items() for sub in schema.subcons
        if sub.subcon is Int64sl
    }  # fmt: skip
    assert signed == {(Command.DIR_SEEK, "loc")}
    assert "except DIR_SEEK's\n`loc`, an i64" in DOC.read_text()


def test_stat_record() -> None:
    assert offsets_and_names("### Stat record") == field_offsets(wire.StatRecord)
    assert wire.StatRecord.sizeof() == wire.STAT_SIZE


def test_open_flags() -> None:
    rows = [(int(row[0]), row[1]) for row in table_under("### Open flags")]
    members = wire.OpenFlags.__members__.items()  # iterating an IntFlag skips READ_ONLY (0)
    assert rows == [(int(flag), name) for name, flag in members]


def test_limits() -> None:
    rows = table_under("### Limits")
    assert rows
    for name, value, _ in rows:
        assert getattr(wire, name) == int(value), name


def test_statuses() -> None:
    rows = [(int(row[0]), row[1]) for row in table_under("## Statuses")]
    assert rows == [(status.value, status.name) for status in Status]


def test_errno_table() -> None:
    documented: set[int] = set()
    for names, status in table_under("### From a Linux error to a status"):
        for name in names.split(", "):
            if name == "anything else":
                continue
            code = getattr(errno, name)
            documented.add(code)
            if name == "EINVAL":
                assert status.startswith("INVALID_NAME for a command that creates or renames")
                assert paths.status_of(code, names_created=True) == Status.INVALID_NAME
                assert paths.status_of(code, names_created=False) == Status.ERROR
            else:
                assert paths.status_of(code) == Status[status], name
    # Every errno vmfs maps to something other than ERROR is in the table.
    special = {e for e in range(1, 200) if paths.status_of(e) != Status.ERROR}
    assert special <= documented, sorted(errno.errorcode[e] for e in special - documented)


def test_every_command_is_described() -> None:
    text = DOC.read_text()
    for cmd in Command:
        assert f"**{cmd.name} ({cmd.value})**" in text, cmd.name


@pytest.mark.parametrize("missing", ["PROTOCOL.md", "DESIGN.md"])
def test_readme_points_only_at_documents_in_the_repository(missing: str) -> None:
    readme = (REPO / "README.md").read_text()
    assert missing not in readme
    for doc in re.findall(r"docs/[\w.-]+\.md", readme):
        assert (REPO / doc).is_file(), doc
    assert "docs/protocol.md" in readme


CITATION = re.compile(r'docs/protocol\.md:?\s*\(?((?:"[^"]+"(?:,\s*(?:and\s+)?|\s+and\s+)?)+)')


def cited_sections(text: str) -> list[str]:
    """The headings a source cites as `docs/protocol.md "Heading"` (lists and line breaks too)."""
    flat = re.sub(r"\n\s*(?:#\s*|\*\s*|/\*\s*)?", " ", text)
    return [name for run in CITATION.findall(flat) for name in re.findall(r'"([^"]+)"', run)]


def test_cited_sections_exist() -> None:
    headings = {line.lstrip("#").strip() for line in LINES if line.startswith("#")}
    sources = [p for d in ("vmfs", "tests", "csrc") for p in sorted((REPO / d).rglob("*.[pc]*"))]
    cited = {
        (str(p.relative_to(REPO)), name)
        for p in sources
        if p.suffix in (".py", ".c") and p != Path(__file__).resolve()
        for name in cited_sections(p.read_text())
    }
    assert len(cited) >= 10  # the pattern still finds the citations
    assert sorted(c for c in cited if c[1] not in headings) == []
