"""Runs inside the guest, started by the per-boot init: the harness's hands in the guest.

It starts the boot command (`fs_driver_init`, or the stand-in driver) as LionsOS's init would,
then serves the host through files in the 9p-shared run directory:

- `exec/N.sh` appears: run it with sh, write `exec/N.out`, then `exec/N.rc` (the host waits
  for the .rc file, so it is written last);
- `stop` appears: end the command (TERM, then KILL), unmount the mount point so the disk image
  is consistent, and return, after which init powers the guest off.

Standard library only; nothing here is needed by vmfs itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL = 0.1


def _uptime() -> str:
    with open("/proc/uptime") as f:
        return f.read().split()[0]


def _run_request(script: Path) -> None:
    stem = script.with_suffix("")
    with open(stem.with_suffix(".out"), "wb") as out:
        try:
            rc = subprocess.run(
                ["sh", str(script)], stdout=out, stderr=subprocess.STDOUT, timeout=300
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    tmp = stem.with_suffix(".rctmp")
    tmp.write_text(str(rc))
    tmp.rename(stem.with_suffix(".rc"))


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _unmount(mount_point: str) -> None:
    with open("/proc/mounts") as f:
        mounted = any(line.split()[1] == mount_point for line in f)
    if mounted:
        subprocess.run(["umount", mount_point], check=False)


def main(run_dir: str) -> int:
    run = Path(run_dir)
    command = (run / "command").read_text().strip()
    (run / "ready").write_text(_uptime())
    print(f"vmfs-guest: agent up at {_uptime()} s; running: {command}", flush=True)
    with open(run / "command.log", "ab") as log:
        proc = subprocess.Popen(
            ["sh", "-c", command], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    done = set()
    recorded = False
    while not (run / "stop").exists():
        for script in sorted((run / "exec").glob("*.sh")):
            if script.name not in done:
                done.add(script.name)
                _run_request(script)
        if not recorded and proc.poll() is not None:
            (run / "command.rc").write_text(str(proc.returncode))
            recorded = True
        time.sleep(POLL)
    _end(proc)
    _unmount(os.environ.get("MOUNT_POINT", "/mnt"))
    print(f"vmfs-guest: stopping at {_uptime()} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
