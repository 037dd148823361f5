"""Recording and replaying command streams: the corpus replays, and replay catches regressions."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vmfs.client import UNIT, LoopbackServer
from vmfs.errors import UsageError
from vmfs.tools.replay import Replay
from vmfs.tracefile import Blob, Session, read_trace, write_trace
from vmfs.wire import Command, OpenFlags, build_command

TRACES = Path(__file__).resolve().parent / "traces"
CORPUS = sorted(TRACES.glob("*.trace"))
CORPUS_V1 = sorted((TRACES / "v1").glob("*.trace"))


def replay(path: Path, root: Path | None = None, driver: str | None = None) -> tuple[int, str]:
    lines: list[str] = []
    code = Replay(path, root, timeout=10.0, report=lines.append, driver=driver).run()
    return code, "\n".join(lines)


def load(path: Path) -> Session:
    (session,) = read_trace(path)
    return session


def save(session: Session, path: Path) -> Path:
    with open(path, "wb") as out:
        write_trace([session], out)
    return path


def commands_of(session: Session, cmd: Command) -> list[dict[str, Any]]:
    return [r for r in session.commands if r["c"] == cmd]


def completion_of(session: Session, command: dict[str, Any]) -> dict[str, Any]:
    return session.completions[command["i"]]


# -- the corpus ---------------------------------------------------------------------------------


def test_corpus_has_the_four_sessions() -> None:
    assert {p.stem for p in CORPUS} >= {"micropython", "posix", "pipelined", "errors"}


@pytest.mark.parametrize(
    "path", CORPUS + CORPUS_V1, ids=[p.stem for p in CORPUS] + [f"v1-{p.stem}" for p in CORPUS_V1]
)
def test_corpus_trace_replays(path: Path) -> None:
    root = path.with_suffix(".root")
    code, report = replay(path, root if root.is_dir() else None)
    sessions = read_trace(path)
    total = sum(len(s.commands) for s in sessions)
    assert code == 0, report
    assert f"{total} matched, 0 mismatched" in report


def test_the_guest_trace_was_recorded_by_the_driver_in_the_guest() -> None:
    """Made by `make_corpus.py guest`: fs_driver_init recorded a FAT-backed session there,
    with its 1 MiB single-command write kept whole."""
    session = load(TRACES / "guest.trace")
    assert session.complete and session.header["tree_note"].startswith("an empty FAT disk")
    assert session.header["mode_bits"] is False
    sizes = [r["in"][0].size for r in commands_of(session, Command.FILE_WRITE)]
    assert 1 << 20 in sizes
    assert all(not r["in"][0].cut for r in commands_of(session, Command.FILE_WRITE))


def test_pipelined_trace_holds_bursts_with_distinct_ids() -> None:
    session = read_trace(TRACES / "pipelined.trace")[0]
    biggest = max(session.batches(), key=len)
    assert len(biggest) >= 20
    assert len({c["id"] for c in biggest}) == len(biggest)


def test_replay_command_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "vmfs", "replay", str(TRACES / "errors.trace")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 mismatched" in run.stdout


# -- replay catches regressions ----------------------------------------------------------------


def test_the_v1_corpus_is_the_same_sessions() -> None:
    assert {p.name for p in CORPUS_V1} <= {p.name for p in CORPUS}
    for old in CORPUS_V1:
        new = TRACES / old.name
        assert read_trace(old)[0].header["vmfs_trace"] == 1
        assert read_trace(new)[0].header["vmfs_trace"] == 2
        assert len(load(old).commands) == len(load(new).commands)


def test_an_edited_completion_fails_field_by_field(tmp_path: Path) -> None:
    records = load(TRACES / "micropython.trace")
    size = commands_of(records, Command.FILE_SIZE)[0]
    completion_of(records, size)["d"] += 1
    missing = next(
        c for c in commands_of(records, Command.STAT) if completion_of(records, c)["s"] != 0
    )
    completion_of(records, missing)["s"] = 0
    code, report = replay(save(records, tmp_path / "edited.trace"))
    assert code == 1
    assert "2 mismatched" in report
    assert f"command #{size['i']} id 0: FILE_SIZE fd=" in report
    assert "field" in report and "expected" in report and "actual" in report
    data_row = next(line for line in report.splitlines() if line.strip().startswith("data"))
    want = completion_of(records, size)["d"]
    assert data_row.split() == ["data", str(want), str(want - 1)]
    status_row = next(line for line in report.splitlines() if line.strip().startswith("status"))
    assert status_row.split() == ["status", "SUCCESS", "NO_FILE"]


def test_an_altered_driver_fails_the_replay(tmp_path: Path, monkeypatch) -> None:
    """A driver whose errno mapping regressed (ENOENT -> ERROR) is caught by the corpus."""
    (tmp_path / "sitecustomize.py").write_text(
        "import errno\nimport vmfs.driver.paths\nfrom vmfs.wire import Status\n"
        "vmfs.driver.paths._BASE[errno.ENOENT] = Status.ERROR\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    code, report = replay(TRACES / "errors.trace")
    assert code == 1
    assert "FILE_OPEN path.offset=0 path.size=8 flags=0 in@0=b'nope.txt'" in report
    status_row = next(line for line in report.splitlines() if line.strip().startswith("status"))
    assert status_row.split() == ["status", "NO_FILE", "ERROR"]


# -- normalisation -----------------------------------------------------------------------------


def test_recorded_handle_numbers_are_mapped(tmp_path: Path) -> None:
    """Renumber every handle in the recording: replay maps them and still matches."""
    records = load(TRACES / "posix.trace")
    issued = {completion_of(records, c)["d"] for c in commands_of(records, Command.FILE_OPEN)}
    renumber = {h: 1_000_000 + k for k, h in enumerate(sorted(issued))}
    for r in records.commands:
        if r["c"] in (Command.FILE_CLOSE, Command.FILE_READ, Command.FILE_WRITE,
                      Command.FILE_SIZE, Command.FILE_TRUNCATE):  # fmt: skip
            r["w"][0] = renumber.get(r["w"][0], r["w"][0])
        if r["c"] == Command.FILE_OPEN and completion_of(records, r)["d"] in renumber:
            completion_of(records, r)["d"] = renumber[completion_of(records, r)["d"]]
    code, report = replay(save(records, tmp_path / "renumbered.trace"))
    assert code == 0, report


def _stat_out(records: Session) -> dict[str, Any]:
    stat = next(
        c for c in commands_of(records, Command.STAT) if completion_of(records, c)["s"] == 0
    )
    return completion_of(records, stat)


def _patch_stat(done: dict[str, Any], field: int, value: int) -> None:
    record = bytearray(done["out"].data())
    struct.pack_into("<Q", record, field * 8, value)
    done["out"] = Blob.of(done["out"].offset, bytes(record))


def test_stat_inode_and_times_are_ignored_but_mode_is_not(tmp_path: Path) -> None:
    records = load(TRACES / "micropython.trace")
    done = _stat_out(records)
    for field in (0, 1, 10, 11, 12, 13):  # dev, ino, atime, mtime, ctime, atime_nsec
        _patch_stat(done, field, 123456789)
    code, report = replay(save(records, tmp_path / "times.trace"))
    assert code == 0, report
    _patch_stat(done, 2, 0o100600)  # mode
    code, report = replay(save(records, tmp_path / "mode.trace"))
    assert code == 1
    assert "stat.mode" in report and "0o100600" in report


def test_listing_order_is_ignored_but_names_are_not(tmp_path: Path) -> None:
    records = load(TRACES / "micropython.trace")
    opened = commands_of(records, Command.DIR_OPEN)[0]
    handle = completion_of(records, opened)["d"]
    reads = [c for c in commands_of(records, Command.DIR_READ) if c["w"][0] == handle]
    outs = [completion_of(records, c) for c in reads if completion_of(records, c)["s"] == 0]
    assert len(outs) >= 2
    blobs = [(o["out"], o["d"]) for o in outs]
    for o, (blob, length) in zip(outs, reversed(blobs), strict=True):
        o["out"], o["d"] = blob, length
    code, report = replay(save(records, tmp_path / "reordered.trace"))
    assert code == 0, report
    outs[0]["out"] = Blob.of(outs[0]["out"].offset, b"renamed.py\0")
    code, report = replay(save(records, tmp_path / "renamed.trace"))
    assert code == 1
    assert "names (as a set)" in report and "renamed.py" in report


# -- recording ---------------------------------------------------------------------------------


def test_a_write_over_64_kib_replays(tmp_path: Path) -> None:
    """Inputs are recorded whole whatever the cap: a 100 KiB write reads back on replay."""
    trace = tmp_path / "big-write.trace"
    payload = bytes((7 * k) & 0xFF for k in range(100 * 1024))
    with LoopbackServer(root=tmp_path / "root", extra_args=["--record", str(trace)]) as server:
        c = server.client
        assert c.initialise().ok
        handle = c.open("big.bin", OpenFlags.READ_WRITE | OpenFlags.CREATE).data
        assert c.write(handle, 0, payload).data == len(payload)
        assert c.read(handle, 65536, 65536)[1] == payload[65536:]
    write = commands_of(load(trace), Command.FILE_WRITE)[0]
    assert write["in"][0].data() == payload and not write["in"][0].cut
    code, report = replay(trace)
    assert code == 0, report


def test_record_cap_cuts_outputs_only_keeping_size_and_digest(tmp_path: Path) -> None:
    trace = tmp_path / "capped.trace"
    payload = bytes(range(256)) * 20
    with LoopbackServer(
        root=tmp_path / "root", extra_args=["--record", str(trace), "--record-cap", "1024"]
    ) as server:
        c = server.client
        assert c.initialise().ok
        handle = c.open("big.bin", OpenFlags.READ_WRITE | OpenFlags.CREATE).data
        assert c.write(handle, 0, payload).data == len(payload)
        done, data = c.read(handle, 0, len(payload))
        assert done.ok and data == payload
    session = load(trace)
    write = commands_of(session, Command.FILE_WRITE)[0]
    assert write["in"][0].data() == payload and write["in"][0].digest is None
    out = completion_of(session, commands_of(session, Command.FILE_READ)[0])["out"]
    assert (out.size, out.digest) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert out.data() == payload[:1024]
    code, report = replay(trace)
    assert code == 0, report
    out.digest = hashlib.sha256(b"other").hexdigest()  # a cut output is compared by digest
    code, report = replay(save(session, tmp_path / "other.trace"))
    assert code == 1
    assert f"{len(payload)} bytes sha256 {hashlib.sha256(payload).hexdigest()[:16]}" in report


def test_a_negative_record_cap_is_refused(tmp_path: Path) -> None:
    from vmfs.client.transport import create_loopback_dir

    loop = create_loopback_dir(tmp_path / "loop", data_size=1 << 20)
    (tmp_path / "root").mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "vmfs", "serve", "--loopback", str(loop), "--root",
         str(tmp_path / "root"), "--record", str(tmp_path / "t.trace"), "--record-cap", "-1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("vmfs: error: serve: --record-cap")
    assert "Traceback" not in run.stderr


def test_batches_follow_the_driver_pumps(tmp_path: Path) -> None:
    trace = tmp_path / "batches.trace"
    with LoopbackServer(root=tmp_path / "root", extra_args=["--record", str(trace)]) as server:
        c = server.client
        assert c.initialise().ok
        tail = c.cmdq.tail
        for k in range(5):
            c.cmdq.write_slot(tail + k, build_command(100 + k, Command.DIR_TELL, b""))
        c.cmdq.publish_tail(tail + 5)
        c.signal()
        for k in range(5):
            c.wait(100 + k)
        assert c.telldir(7).status != 0
        share_size = len(c.share)
    session = read_trace(trace)[0]
    sizes = [[r["id"] for r in batch] for batch in session.batches()]
    assert sizes[1] == [100, 101, 102, 103, 104]
    assert len(sizes) == 3 and len(sizes[2]) == 1
    assert [entry[:2] for entry in session.header["tree"]] == [["d", ""]]
    assert session.header["share_size"] == share_size


def test_replay_without_a_tree_needs_a_root(tmp_path: Path) -> None:
    records = load(TRACES / "errors.trace")
    records.header["tree"] = None
    trace = save(records, tmp_path / "no-tree.trace")
    with pytest.raises(UsageError, match="--root"):
        replay(trace)
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "file.txt").write_bytes(b"contents\n")
    (root / "dir" / "inner.txt").write_bytes(b"inner\n")
    code, report = replay(trace, root)
    assert code == 0, report


def test_share_offsets_are_kept(tmp_path: Path) -> None:
    """Inputs are laid where the client put them (posix writes at share unit 2)."""
    session = read_trace(TRACES / "posix.trace")[0]
    writes = [r for r in session.commands if r["c"] == Command.FILE_WRITE]
    assert writes and all(r["in"][0].offset == 2 * UNIT == r["w"][2] for r in writes)


def test_readme_lists_the_corpus_with_its_command_counts() -> None:
    readme = (TRACES.parent.parent / "README.md").read_text()
    for path in CORPUS:
        count = sum(len(s.commands) for s in read_trace(path))
        assert f"| `{path.name}` | {count} |" in readme


def test_a_restarted_driver_appends_a_session_that_replays(tmp_path: Path) -> None:
    trace = tmp_path / "two.trace"
    with LoopbackServer(root=tmp_path / "root", extra_args=["--record", str(trace)]) as server:
        c = server.client
        assert c.initialise().ok
        handle = c.open("kept.txt", OpenFlags.WRITE_ONLY | OpenFlags.CREATE).data
        assert c.write(handle, 0, b"across restarts").ok
        assert server.stop() == 0
        server.start()
        assert c.size(handle).status != 0  # handles do not survive the restart
        assert c.initialise().ok
        handle = c.open("kept.txt", OpenFlags.READ_ONLY).data
        assert c.read(handle, 0, 100)[1] == b"across restarts"
    sessions = read_trace(trace)
    assert len(sessions) == 2
    assert [entry[1] for entry in sessions[1].header["tree"]] == ["", "kept.txt"]
    code, report = replay(trace)
    assert code == 0, report
    assert "2 session(s)" in report


def test_bench_measures_recording_with_the_record_target(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "vmfs", "bench", "--ops", "200", "--file-mib", "1", "--json",
         "--workloads", "write-64k", "--targets", "record", "--root", str(tmp_path / "root")],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    (result,) = json.loads(out.stdout)
    assert result["target"] == "record" and result["ops"] > 0 and result["errors"] == 0
    note = next(n for n in result["notes"] if n.startswith("trace "))
    per_byte = float(note.split(", ")[-1].split()[0])
    assert 0 < per_byte < 0.05, note  # the benchmark writes one repeated byte: it compresses


@pytest.mark.parametrize("uncompressed", [False, True])
def test_compressible_writes_are_deflated_unless_asked_not_to(
    tmp_path: Path, uncompressed: bool
) -> None:
    trace = tmp_path / "text.trace"
    payload = b"def greet(name):\n    return 'hello ' + name\n" * 3000
    extra = ["--record", str(trace)] + (["--record-uncompressed"] if uncompressed else [])
    with LoopbackServer(root=tmp_path / "root", extra_args=extra) as server:
        c = server.client
        assert c.initialise().ok
        handle = c.open("greet.py", OpenFlags.WRITE_ONLY | OpenFlags.CREATE).data
        assert c.write(handle, 0, payload).data == len(payload)
    (blob,) = commands_of(load(trace), Command.FILE_WRITE)[0]["in"]
    assert blob.data() == payload
    assert blob.encoding == ("r" if uncompressed else "z")
    assert (trace.stat().st_size > len(payload)) == uncompressed
    code, report = replay(trace)
    assert code == 0, report
