"""Which Python modules a serving driver really imports: measured, so the initrd ships only those.

The probe starts `vmfs serve --loopback ... --record ...` on the host in a fresh interpreter with
`-S` (as the initrd's launcher does) and `PYTHONPROFILEIMPORTTIME=1`, after importing every vmfs
module the image ships (so a path the session does not take, such as mounting a block device,
still brings its imports). A client session (`session.fs_session`) then runs against it, so
imports made while serving are seen too; the driver's import-time log is the answer.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vmfs.errors import VmfsError
from vmfs.resources import PACKAGE_DIR

SOURCE_ROOT = PACKAGE_DIR.parent  # the directory holding the vmfs package

# vmfs modules that serving never needs: tooling, clients, benchmarks, the guest harness.
NOT_SERVED = ("vmfs.__main__", "vmfs._native_build", "vmfs.tools", "vmfs.client", "vmfs.guest")
THIRD_PARTY = ("construct", "transitions", "six", "_cffi_backend")


class ProbeError(VmfsError):
    """The probe driver did not start or did not serve the session."""


def served_vmfs_modules() -> list[str]:
    """Every vmfs module except NOT_SERVED (and anything under them), sorted."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(SOURCE_ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        name = ".".join(parts)
        if not any(name == x or name.startswith(x + ".") for x in NOT_SERVED):
            names.append(name)
    return names


def _dependency_paths() -> list[str]:
    """Where the host finds construct, transitions, ... (their site-packages directories)."""
    dirs: list[str] = []
    for name in THIRD_PARTY:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            origin = Path(spec.origin)
            top = origin.parent.parent if origin.name == "__init__.py" else origin.parent
            if str(top) not in dirs:
                dirs.append(str(top))
    return dirs


def parse_importtime(log: str) -> set[str]:
    """Module names from `-X importtime` lines ("import time: self | cumulative | name")."""
    names = set()
    for line in log.splitlines():
        if line.startswith("import time:") and not line.rstrip().endswith("| imported package"):
            name = line.rsplit("|", 1)[-1].strip()
            if name and "import time" not in name:
                names.add(name)
    return names


def probe_imports(timeout: float = 60.0) -> set[str]:
    """Run the probe (about two seconds) and return every module name the driver imported."""
    from vmfs.client.transport import LoopbackClientTransport, create_loopback_dir
    from vmfs.guest.session import ProtocolClient, fs_session

    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in served_vmfs_modules())
        + "from vmfs.cli import main\nsys.argv[0] = 'vmfs'\nsys.exit(main())\n"
    )
    with tempfile.TemporaryDirectory(prefix="vmfs-probe-") as tmp:
        base = Path(tmp)
        loop = create_loopback_dir(base / "loop")
        (base / "root").mkdir()
        env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
        env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT), *_dependency_paths()])
        cmd = [sys.executable, "-S", "-c", code, "serve", "--loopback", str(loop),
               "--root", str(base / "root"), "--record", str(base / "trace")]  # fmt: skip
        with open(base / "driver.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        transport = LoopbackClientTransport(loop)
        try:
            fs_session(ProtocolClient(transport, log=lambda _line: None))
        except Exception as e:
            log_text = (base / "driver.log").read_text()
            raise ProbeError(f"probe session failed: {e}\n{log_text}") from e
        finally:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            transport.close()
        return parse_importtime((base / "driver.log").read_text(errors="replace"))
