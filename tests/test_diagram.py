"""The committed diagrams are what the machines generate, and a changed machine is caught."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmfs import fsm
from vmfs.tools import diagram

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "diagrams"
MACHINES = {
    "request": (fsm.REQUEST_STATES, fsm.REQUEST_TRANSITIONS),
    "driver": (fsm.DRIVER_STATES, fsm.DRIVER_TRANSITIONS),
    "mount": (fsm.MOUNT_STATES, fsm.MOUNT_TRANSITIONS),
}


def files_named(problems: list[str]) -> set[str]:
    """The committed files the problems are about (not the directories above them)."""
    prefix = f"{COMMITTED}/"
    assert all(p.startswith(prefix) for p in problems), problems
    return {p.removeprefix(prefix).split(":", 1)[0] for p in problems}


def test_committed_diagrams_match_the_machines() -> None:
    assert diagram.check(COMMITTED) == []


def test_check_command_passes_on_the_repository() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "vmfs", "diagram", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr


def test_an_altered_machine_fails_the_check(monkeypatch, capsys) -> None:
    extra = {"trigger": "cancel", "source": "barrier_wait", "dest": "idle"}
    states, transitions, initial = fsm.MACHINES["request"]
    monkeypatch.setitem(fsm.MACHINES, "request", (states, [*transitions, extra], initial))
    assert files_named(diagram.check(COMMITTED)) == {"request.mmd", "request.dot"}
    assert diagram.main(COMMITTED, check_only=True) == 1
    assert "request.mmd" in capsys.readouterr().err


def test_a_missing_state_fails_the_check(monkeypatch) -> None:
    states, transitions, initial = fsm.MACHINES["mount"]
    monkeypatch.setitem(fsm.MACHINES, "mount", ([*states, "unmounting"], transitions, initial))
    assert "mount.mmd" in files_named(diagram.check(COMMITTED))


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_every_state_and_trigger_is_drawn(name: str) -> None:
    states, transitions = MACHINES[name]
    text = (COMMITTED / f"{name}.mmd").read_text()
    for state in states:
        assert f'state "{state}" as {state}' in text
    for t in transitions:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for source in sources:
            edge = next(
                line
                for line in text.splitlines()
                if line.strip().startswith(f"{source} --> {t['dest']}:")
            )
            assert t["trigger"] in edge.split(":", 1)[1].replace(" ", "").split("|")


def test_generation_is_deterministic_and_writes_svg(tmp_path: Path) -> None:
    first = diagram.write(tmp_path / "a")
    second = diagram.write(tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second]
    for path in first:
        if path.suffix != ".svg":
            assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()
    assert b"<svg" in (tmp_path / "a" / "request.svg").read_bytes()
    assert diagram.check(tmp_path / "a") == []


def test_readme_explains_every_state_and_trigger() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## State diagrams", 1)[1].split("\n## ", 1)[0]
    for states, transitions in MACHINES.values():
        for name in [*states, *(t["trigger"] for t in transitions)]:
            assert f"`{name}`" in section, name


def test_readme_embeds_the_generated_mermaid() -> None:
    readme = (REPO / "README.md").read_text()
    for name in MACHINES:
        assert f"<!-- diagram:{name} -->\n```mermaid\n" in readme
    assert diagram.embedded(readme) == readme


def test_readme_embedding_is_refreshed(tmp_path: Path) -> None:
    stale = "intro\n<!-- diagram:mount -->\nold drawing\n<!-- /diagram -->\nend\n"
    fresh = diagram.embedded(stale)
    assert fresh.startswith("intro\n<!-- diagram:mount -->\n```mermaid\n")
    assert "old drawing" not in fresh
    assert (COMMITTED / "mount.mmd").read_text() in fresh
    readme = tmp_path / "README.md"
    readme.write_text(stale)
    assert diagram.main(COMMITTED, check_only=True, readme=readme) == 1


def test_a_removed_readme_marker_fails_the_check(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    readme = tmp_path / "README.md"
    text = (REPO / "README.md").read_text()
    assert "<!-- diagram:mount -->" in text
    readme.write_text(text.replace("<!-- diagram:mount -->\n", ""))
    assert diagram.main(COMMITTED, check_only=True, readme=readme) == 1
    assert "diagram:mount" in capsys.readouterr().err


def test_outside_the_repository_it_writes_only_where_told(tmp_path: Path) -> None:
    vmfs = [sys.executable, "-m", "vmfs", "diagram"]
    refused = subprocess.run(vmfs, cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 1 and "--out" in refused.stderr
    assert list(tmp_path.iterdir()) == []
    made = subprocess.run([*vmfs, "-o", "out"], cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"request.mmd", "mount.svg"}
