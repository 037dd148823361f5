"""The trace file: its format, writing records, and reading (and checking) a whole trace.

Format, version 2: each record is one JSON object on one line, followed directly by the raw bytes
of the buffers it names (in the order it names them) and a line end, so large payloads are
neither base64 nor JSON and `head`/`grep` still show every record. A buffer is named by a descriptor
`[share offset, size, encoding, stored length]` or, when only its head was kept,
`[offset, size, encoding, stored length, sha256 hex of all size bytes]`; `encoding` is "r" (the
stored bytes are the data) or "z" (raw deflate, RFC 1951, ending in a full flush: each such
buffer inflates on its own, while the writer keeps one compressor for the whole file rather
than paying zlib's set-up per buffer). Records:

- Session header, written each time a driver starts recording (replay restarts its driver at
  each one): `{"vmfs_trace": 2, "share_size": N, "cap": C, "umask": U, "tree": [...] | null,
  "tree_note": "..."}`. `tree` is the served root when recording started (directory mode):
  `["d", path, mode]` (path "" is the root itself), `["f", path, mode, descriptor]`,
  `["l", path, target]`, parents before children; null means replay needs `--root`. An
  optional `"mode_bits": false` says the recorded filesystem keeps no permission bits (FAT):
  replay then compares only the file type of stat modes.
- Command taken: `{"t": "c", "b": batch, "i": queue index, "id": id, "c": type,
  "w": [six u64 parameter words], "in": [descriptor, ...]}`. `w` is the raw 48-byte parameter
  area, garbage included; `in` holds every input buffer (paths, write data) in full.
- Completion written: `{"t": "r", "i": index, "id": id, "s": status, "d": data, "out": d}`,
  with `out` only when the command wrote into the share; outputs longer than the cap C keep
  their first C bytes, their size and their SHA-256 (replay recomputes them).
- Session end, written when the driver stops recording cleanly: `{"t": "e", "commands": n,
  "completions": m}`. A last session without one was cut short (or its driver killed).

Version 1 (still read): the same records as JSON lines, with buffers inline as
`[offset, base64]` or `[offset, base64 head, size, sha256]`, inputs cut at the cap too, and no
end record. Only the standard library is needed, so the guest can record without extra packages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vmfs.errors import VmfsError

VERSION = 2
READABLE = (1, 2)
U64 = 1 << 64
COMPRESS_MIN = 256  # shorter buffers are stored as they are
PROBE = 1024  # compress a buffer only if its first PROBE bytes shrink
PROBE_RATIO = 0.9
RAW_DEFLATE = -15  # zlib's wbits for deflate data without a zlib header


class TraceError(VmfsError):
    """The file is not a complete trace this version can read."""


@dataclass
class Blob:
    """A share buffer as recorded: where it was, how long, and what was kept of it."""

    offset: int
    size: int
    stored: bytes = b""
    encoding: str = "r"
    digest: str | None = None  # sha256 of all `size` bytes when only a head was kept

    @classmethod
    def of(
        cls, offset: int, data: bytes, cap: int | None = None, packer: Packer | None = None
    ) -> Blob:
        """Record `data` (at share `offset`), keeping its first `cap` bytes and digest if longer."""
        pack = (packer or Packer()).pack
        if cap is None or len(data) <= cap:
            return cls(offset, len(data), *pack(data))
        return cls(offset, len(data), *pack(data[:cap]), hashlib.sha256(data).hexdigest())

    @property
    def cut(self) -> bool:
        return self.digest is not None

    def data(self) -> bytes:
        """The recorded bytes: all of them, or only the head of a cut buffer."""
        data = self.stored
        if self.encoding == "z":
            try:
                data = zlib.decompressobj(RAW_DEFLATE).decompress(self.stored)
            except zlib.error as e:
                raise TraceError(f"a buffer at share offset {self.offset} is damaged: {e}") from e
        if len(data) != self.size and (self.digest is None or len(data) > self.size):
            raise TraceError(
                f"a buffer at share offset {self.offset} is damaged: {len(data)} bytes where the "
                f"trace says {self.size}"
            )
        return data

    def descriptor(self) -> list[Any]:
        head = [self.offset, self.size, self.encoding, len(self.stored)]
        return head if self.digest is None else [*head, self.digest]


class Packer:
    """Compresses buffers for one writer: deflate at its fastest level when a probe of the first
    bytes shrinks, so incompressible data costs one small probe, not a whole compression."""

    def __init__(self, compress: bool = True) -> None:
        self.compress = compress
        self._deflate = zlib.compressobj(1, zlib.DEFLATED, RAW_DEFLATE)
        self._probe = zlib.compressobj(1, zlib.DEFLATED, RAW_DEFLATE)

    def pack(self, data: bytes) -> tuple[bytes, str]:
        if self.compress and len(data) >= COMPRESS_MIN:
            probe = data[:PROBE]
            probed = self._probe.compress(probe) + self._probe.flush(zlib.Z_FULL_FLUSH)
            if len(probed) < PROBE_RATIO * len(probe):
                packed = self._deflate.compress(data) + self._deflate.flush(zlib.Z_FULL_FLUSH)
                if len(packed) < len(data):
                    return packed, "z"
        return data, "r"


# ---------------------------------------------------------------------------------------------
# Writing.


def encode(record: dict[str, Any]) -> list[bytes]:
    """One record as the chunks to write: its JSON line, then the bytes of its buffers."""
    blobs: list[Blob] = []

    def named(value: Any) -> Any:
        if isinstance(value, Blob):
            blobs.append(value)
            return value.descriptor()
        if isinstance(value, list):
            return [named(v) for v in value]
        return value

    line = {key: named(value) for key, value in record.items()}
    chunks = [json.dumps(line, separators=(",", ":")).encode() + b"\n"]
    if blobs:  # the bytes, then a line end, so the next record starts on a line of its own
        chunks += [b.stored for b in blobs] + [b"\n"]
    return chunks


def write_trace(sessions: Iterable[Session], out: IO[bytes]) -> None:
    """Write sessions in the current format (commands, then completions, then the end record)."""
    for session in sessions:
        header = dict(session.header, vmfs_trace=VERSION)
        out.writelines(encode(header))
        for record in session.commands:
            out.writelines(encode(record))
        for record in session.completions.values():
            out.writelines(encode(record))
        if session.complete:
            end = {"t": "e", "commands": len(session.commands)}
            out.writelines(encode(dict(end, completions=len(session.completions))))


# ---------------------------------------------------------------------------------------------
# Reading.


@dataclass
class Session:
    """One recording session: header, commands taken (in order), completions by queue index."""

    header: dict[str, Any]
    commands: list[dict[str, Any]] = field(default_factory=list)
    completions: dict[int, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False  # its end record was read (version 2)

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        for command in self.commands:
            if batch and command["b"] != batch[0]["b"]:
                yield batch
                batch = []
            batch.append(command)
        if batch:
            yield batch


def read_trace(path: str | os.PathLike[str]) -> list[Session]:
    """Every session in a trace, checked whole: a cut or malformed trace raises TraceError."""
    name = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise TraceError(f"{name} is a directory, not a trace file") from None
    except OSError as e:
        raise TraceError(f"cannot read trace {name}: {e.strerror or e}") from None
    reader = _Reader(name, data)
    sessions = reader.sessions()
    if sessions[-1].header["vmfs_trace"] >= 2 and not sessions[-1].complete:
        raise TraceError(
            f"{name}: truncated: the last session has no end record (the file was cut short, "
            "or its driver was killed while recording)"
        )
    return sessions


class _Reader:
    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data, self.pos, self.number, self.blobs = name, data, 0, 0, 0

    def fail(self, why: str) -> TraceError:
        return TraceError(f"{self.name}: record {self.number}: {why}")

    def records(self) -> Iterator[dict[str, Any]]:
        version = 0
        while self.pos < len(self.data):
            self.number += 1
            end = self.data.find(b"\n", self.pos)
            if end < 0:
                raise TraceError(
                    f"{self.name}: truncated: the last record is cut short "
                    f"(no line end after byte {self.pos})"
                )
            line = self.data[self.pos : end]
            self.pos = end + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                if self.number == 1:
                    raise TraceError(f"{self.name}: not a vmfs trace") from None
                raise self.fail("not a JSON object") from None
            if not isinstance(record, dict):
                raise self.fail("not a JSON object")
            if "vmfs_trace" in record:
                version = record["vmfs_trace"]
                if version not in READABLE:
                    raise self.fail(f"trace version {version!r} (this vmfs reads {READABLE})")
            elif not version:
                raise TraceError(f"{self.name}: not a vmfs trace (no session header first)")
            self.blobs = 0
            record = self._blobs(record, version)
            if version >= 2 and self.blobs:
                if self.data[self.pos : self.pos + 1] != b"\n":
                    raise TraceError(
                        f"{self.name}: truncated: record {self.number}'s buffers are not followed "
                        "by a line end"
                    )
                self.pos += 1
            yield record

    def _blobs(self, record: dict[str, Any], version: int) -> dict[str, Any]:
        """Replace buffer descriptors by Blobs (reading their bytes that follow the line)."""
        try:
            if "vmfs_trace" in record:
                tree = record.get("tree")
                if tree is not None:
                    for entry in _list(tree):
                        if _list(entry)[:1] != ["f"]:
                            continue
                        if version == 1:  # the file's content, base64
                            entry[3] = [0, entry[3]]
                        entry[3] = self._blob(entry[3], version)
            if "in" in record:
                record["in"] = [self._blob(b, version) for b in _list(record["in"])]
            if "out" in record:
                record["out"] = self._blob(record["out"], version)
        except (TypeError, ValueError, IndexError, KeyError, binascii.Error) as e:
            raise self.fail(f"malformed buffer: {e}") from None
        return record

    def _blob(self, desc: Any, version: int) -> Blob:
        desc = _list(desc)
        if version == 1:
            offset, head = _u64(desc[0]), base64.b64decode(desc[1], validate=True)
            if len(desc) == 2:
                return Blob(offset, len(head), head)
            return Blob(offset, _u64(desc[2]), head, "r", str(desc[3]))
        self.blobs += 1
        offset, size, encoding, length = desc[:4]
        if encoding not in ("r", "z") or len(desc) not in (4, 5):
            raise ValueError(f"bad descriptor {desc!r}")
        stored = self.data[self.pos : self.pos + _u64(length)]
        if len(stored) < length:
            raise TraceError(
                f"{self.name}: truncated: record {self.number}'s buffer has {len(stored)} of "
                f"{length} bytes"
            )
        self.pos += length
        return Blob(_u64(offset), _u64(size), stored, encoding, str(desc[4]) if desc[4:] else None)

    def sessions(self) -> list[Session]:
        sessions: list[Session] = []
        for record in self.records():
            if "vmfs_trace" in record:
                _check_header(record, self)
                sessions.append(Session(record))
                continue
            session = sessions[-1]
            if session.complete:
                raise self.fail("a record after its session's end record")
            kind = record.get("t")
            if kind == "c":
                _check_ints(record, ("b", "i", "id", "c"), self)
                words = record.get("w")
                if not isinstance(words, list) or len(words) != 6:
                    raise self.fail('"w" must be a list of six parameter words')
                _check_ints({f"w[{k}]": w for k, w in enumerate(words)}, None, self)
                session.commands.append(record)
            elif kind == "r":
                _check_ints(record, ("i", "id", "s", "d"), self)
                session.completions[record["i"]] = record
            elif kind == "e":
                session.complete = True
            else:
                raise self.fail(f"unknown record type {kind!r}")
        if not sessions:
            raise TraceError(f"{self.name}: empty: no session header")
        return sessions


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, not {value!r}")
    return value


def _u64(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < U64:
        raise ValueError(f"{value!r} is not a u64")
    return value


def _check_ints(record: dict[str, Any], keys: Iterable[str] | None, reader: _Reader) -> None:
    for key in keys if keys is not None else record:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < U64:
            raise reader.fail(f"field {key!r} is {value!r}, not a u64")


def _check_header(header: dict[str, Any], reader: _Reader) -> None:
    _check_ints(header, ("share_size",), reader)
    umask = header.get("umask", 0o022)
    if isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777:
        raise reader.fail(f"umask {umask!r}")
    if header["share_size"] == 0:
        raise reader.fail("share_size 0")
