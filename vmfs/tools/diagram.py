"""State diagrams generated from the very `transitions` machines the driver runs.

Each machine in `vmfs.fsm` is rebuilt as a `GraphMachine` and rendered twice: Mermaid (`.mmd`,
which GitHub renders inline) and Graphviz DOT (`.dot`, turned into `.svg` by `dot`). Nothing is
drawn by hand, so a changed machine without fresh diagrams is caught by `vmfs diagram --check`.

The check compares the Mermaid and DOT sources only: both are produced by this code and are
byte-for-byte stable, whereas the SVG bytes depend on the installed Graphviz version (its layout
and a version comment), so comparing them would fail on machines that are not wrong.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transitions.extensions import GraphMachine

from vmfs import fsm
from vmfs.errors import VmfsError

DEFAULT_DIR = Path("diagrams")
README = Path("README.md")
_EMBED = re.compile(r"(<!-- diagram:(\w+) -->\n)(.*?)(<!-- /diagram -->)", re.S)


@dataclass(frozen=True)
class Diagram:
    name: str
    title: str
    build: Callable[..., Any]


DIAGRAMS = (
    Diagram("request", "vmfs request lifecycle", fsm.request_machine),
    Diagram("driver", "vmfs driver lifecycle", fsm.driver_machine),
    Diagram("mount", "vmfs mount state", fsm.mount_machine),
)


class _Model:
    """A bare model: the graph is drawn for the machine, not for any live request."""

    state: str


def _graph(diagram: Diagram, engine: str) -> Any:
    """The machine's graph with no state highlighted (the model's state is just the initial)."""
    model = _Model()
    machine = diagram.build(
        model, machine_class=GraphMachine, title=diagram.title, graph_engine=engine
    )
    graph = machine.model_graphs[id(model)]
    graph.reset_styling()
    return graph.get_graph(title=diagram.title), machine.initial


def mermaid(diagram: Diagram) -> str:
    source, _ = _graph(diagram, "mermaid")
    text = source.source if hasattr(source, "source") else str(source)
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(lines).rstrip() + "\n"


def dot(diagram: Diagram) -> str:
    graph, initial = _graph(diagram, "graphviz")
    graph.node("__initial", label="", shape="point", width="0.15")
    graph.edge("__initial", initial)
    return graph.source.rstrip() + "\n"


def sources(diagram: Diagram) -> dict[str, str]:
    """The compared outputs of one diagram, by file name."""
    return {f"{diagram.name}.mmd": mermaid(diagram), f"{diagram.name}.dot": dot(diagram)}


def dot_program() -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise VmfsError(
            "diagram: Graphviz `dot` is not installed, so no SVG can be drawn "
            "(Debian: apt-get install graphviz)"
        )
    return exe


def svg(dot_source: str) -> bytes:
    """Lay out DOT with the Graphviz `dot` program."""
    run = subprocess.run([dot_program(), "-Tsvg"], input=dot_source.encode(), capture_output=True)
    if run.returncode != 0:
        reason = run.stderr.decode(errors="replace").strip().splitlines()
        raise VmfsError(f"diagram: `dot -Tsvg` failed: {reason[-1] if reason else run.returncode}")
    return run.stdout


def write(out: Path, diagrams: tuple[Diagram, ...] = DIAGRAMS) -> list[Path]:
    """Write every diagram's Mermaid, DOT and SVG into `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for diagram in diagrams:
        for name, text in sources(diagram).items():
            (out / name).write_text(text)
            written.append(out / name)
        target = out / f"{diagram.name}.svg"
        target.write_bytes(svg(sources(diagram)[f"{diagram.name}.dot"]))
        written.append(target)
    return written


def check(out: Path, diagrams: tuple[Diagram, ...] = DIAGRAMS) -> list[str]:
    """Problems with the committed diagrams in `out` (empty when they match the code)."""
    problems = []
    for diagram in diagrams:
        for name, text in sources(diagram).items():
            path = out / name
            if not path.exists():
                problems.append(f"{path}: missing")
            elif path.read_text() != text:
                problems.append(f"{path}: differs from what the machine in vmfs/fsm.py generates")
        if not (out / f"{diagram.name}.svg").exists():
            problems.append(f"{out / diagram.name}.svg: missing")
    return problems


def embedded(readme: str) -> str:
    """`readme` with each `<!-- diagram:NAME -->` block holding NAME's Mermaid source."""
    by_name = {d.name: d for d in DIAGRAMS}

    def block(match: re.Match[str]) -> str:
        diagram = by_name.get(match.group(2))
        if diagram is None:
            return match.group(0)
        return f"{match.group(1)}```mermaid\n{mermaid(diagram)}```\n{match.group(4)}"

    return _EMBED.sub(block, readme)


def readme_problems(readme: Path, text: str) -> list[str]:
    """A diagram whose README block is gone would silently stop being checked."""
    present = {match.group(2) for match in _EMBED.finditer(text)}
    problems = [
        f"{readme}: the <!-- diagram:{d.name} --> ... <!-- /diagram --> block is missing"
        for d in DIAGRAMS
        if d.name not in present
    ]
    if embedded(text) != text:
        problems.append(f"{readme}: an embedded diagram differs from the generated one")
    return problems


def in_repository(readme: Path = README) -> bool:
    """Whether the current directory is the root of the vmfs repository."""
    return readme.is_file() and Path("vmfs", "fsm.py").is_file()


def main(out: Path | None, check_only: bool, readme: Path = README) -> int:
    """`vmfs diagram [--check] [--out DIR]`; without --out only at the repository's root."""
    repository = in_repository(readme)
    if out is None:
        if not repository:
            raise VmfsError(
                "diagram: not at the root of the vmfs repository (no README.md and "
                "vmfs/fsm.py here); run it there, or give --out DIR"
            )
        out = DEFAULT_DIR
    text = readme.read_text() if repository else None
    if check_only:
        problems = check(out)
        if text is not None:
            problems += readme_problems(readme, text)
        for problem in problems:
            print(f"vmfs diagram: {problem}", file=sys.stderr)
        if problems:
            print(
                "vmfs diagram: regenerate with `vmfs diagram` and commit diagrams/", file=sys.stderr
            )
            return 1
        print(f"vmfs diagram: the diagrams in {out}/ match the machines in vmfs/fsm.py")
        return 0
    dot_program()  # before anything is written
    for path in write(out):
        print(path)
    if text is not None and embedded(text) != text:
        readme.write_text(embedded(text))
        print(readme)
    return 0
