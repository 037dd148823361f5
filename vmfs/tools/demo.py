"""`vmfs demo`: a readable session against a temporary root, as a LionsOS program would run it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vmfs.client import Completion, LoopbackServer
from vmfs.wire import OpenFlags, Status


def run_demo(verbose: bool = True) -> int:
    steps: list[tuple[str, Completion, Status]] = []
    started = time.monotonic()

    def step(label: str, action: Callable[[], Any], expect: Status = Status.SUCCESS) -> Any:
        result = action()
        done = result[0] if isinstance(result, tuple) else result
        extra = ""
        if isinstance(result, tuple) and result[1] is not None:
            extra = f" -> {_show(result[1])}"
        elif isinstance(done, Completion) and done.ok and done.data:
            extra = f" -> {done.data}"
        steps.append((label, done, expect))
        if verbose:
            print(f"  {label:<50} {Status(done.status).name:<17}{extra}")
        return result

    with LoopbackServer() as server:
        client = server.client
        if verbose:
            print(f"vmfs demo: driver serving {server.root} over loopback {server.directory}")
        step("INITIALISE", client.initialise)
        step('DIR_CREATE "/notes"', lambda: client.mkdir("/notes"))
        opened = step(
            'FILE_OPEN "/notes/hello.txt" READ_WRITE|CREATE',
            lambda: client.open("/notes/hello.txt", OpenFlags.READ_WRITE | OpenFlags.CREATE),
        )
        handle = opened.data
        text = b"Hello from a LionsOS client!\n"
        step(f"FILE_WRITE {len(text)} bytes at 0", lambda: client.write(handle, 0, text))
        step("FILE_SIZE", lambda: client.size(handle))
        step("FILE_SYNC", lambda: client.sync(handle))
        step("FILE_READ 64 bytes at 0", lambda: client.read(handle, 0, 64))
        step("FILE_CLOSE", lambda: client.close(handle))
        listing = step('DIR_OPEN "/notes"', lambda: client.opendir("/notes"))
        step("DIR_READ", lambda: client.readdir(listing.data))
        step("DIR_READ", lambda: client.readdir(listing.data), Status.END_OF_DIRECTORY)
        step("DIR_CLOSE", lambda: client.closedir(listing.data))
        step('STAT "/notes/hello.txt"', lambda: _stat_summary(client, "/notes/hello.txt"))
        step(
            'RENAME "/notes/hello.txt" -> "/notes/greeting.txt"',
            lambda: client.rename("/notes/hello.txt", "/notes/greeting.txt"),
        )
        step(
            'STAT "/notes/hello.txt" (old name)',
            lambda: client.stat("/notes/hello.txt")[0],
            Status.NO_FILE,
        )
        step('FILE_REMOVE "/notes/greeting.txt"', lambda: client.remove("/notes/greeting.txt"))
        step('DIR_REMOVE "/notes"', lambda: client.rmdir("/notes"))
        step(
            'STAT "/../../etc/passwd" (confined to the root)',
            lambda: client.stat("/../../etc/passwd")[0],
            Status.NO_FILE,
        )
        extra = client.pending_completions()
        code = server.stop()

    unexpected = [label for label, done, expect in steps if done.status != expect]
    refused = sum(1 for _, _, expect in steps if expect != Status.SUCCESS)
    elapsed = time.monotonic() - started
    ok = not unexpected and not extra and code == 0
    print(
        f"vmfs demo: {len(steps)} commands, {len(steps) - refused} succeeded, {refused} refused "
        f"as expected, one completion each, driver exit {code}, {elapsed:.2f} s: "
        f"{'OK' if ok else 'FAILED ' + ', '.join(unexpected)}"
    )
    return 0 if ok else 1


def _stat_summary(client: Any, path: str) -> tuple[Completion, str | None]:
    done, record = client.stat(path)
    if record is None:
        return done, None
    return done, f"mode {record['mode']:o}, size {record['size']}, nlink {record['nlink']}"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return repr(value)
    return str(value)
