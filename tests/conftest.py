"""Shared fixtures: a served root with a driver subprocess and a connected client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmfs.client import Client, LoopbackServer
from vmfs.shm import SharedIndexWords
from vmfs.wire import TAIL_OFFSET

# `VMFS_TEST_ENGINE=python` runs every driver the tests start with --no-fast-path: the Python
# engine alone, without the native loop. scripts/test runs the hostile battery, the traces and
# the end-to-end tests that way too, so both engines answer every attack and every trace.
ENGINE_VARIABLE = "VMFS_TEST_ENGINE"
PYTHON_ENGINE = os.environ.get(ENGINE_VARIABLE) == "python"


@pytest.fixture(autouse=True)
def engine_under_test(monkeypatch: pytest.MonkeyPatch) -> None:
    if not PYTHON_ENGINE:
        return
    start = LoopbackServer.start

    def start_without_native(self: LoopbackServer) -> None:
        if "--no-fast-path" not in self.extra_args:
            self.extra_args.append("--no-fast-path")
        start(self)

    monkeypatch.setattr(LoopbackServer, "start", start_without_native)


@pytest.fixture
def server(tmp_path) -> Iterator[LoopbackServer]:
    """A running `vmfs serve --loopback`, not yet initialised."""
    with LoopbackServer(root=tmp_path / "root", directory=tmp_path / "loop") as srv:
        yield srv


@pytest.fixture
def client(server: LoopbackServer) -> Client:
    """A client whose driver has been INITIALISEd."""
    done = server.client.initialise()
    assert done.ok, done
    return server.client


class PumpedTransport:
    """A client transport whose waiting runs the in-process driver's batch loop instead."""

    def __init__(self, inner: Any, driver: Any) -> None:
        self.inner = inner
        self.driver = driver
        self.command, self.completion, self.data = inner.command, inner.completion, inner.data
        self.completion_words = SharedIndexWords(inner.completion)

    def signal(self) -> None:
        self.inner.signal()

    def wait(self, timeout: float | None) -> bool:
        """Serve what is queued; True only if the driver rang the client's doorbell.

        A real client sleeps until the doorbell: completions published without it would leave
        that client waiting, so that fails here.
        """
        published = self.completion_words.load(TAIL_OFFSET)
        engine = self.driver.engine
        engine.pump()
        engine.flush()
        engine.pump()
        rang = self.inner.wait(0)
        if self.completion_words.load(TAIL_OFFSET) != published:
            assert rang, "completions were published without ringing the client's doorbell"
        return rang

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(params=["uring", "sync"])
def local(request, tmp_path) -> Iterator[tuple[Client, Path]]:
    """(client, root) with an in-process, initialised driver: io_uring and synchronous modes."""
    from vmfs.client.transport import LoopbackClientTransport, create_loopback_dir
    from vmfs.driver.process import Driver, Options
    from vmfs.uio import LoopbackTransport

    root = tmp_path / "root"
    root.mkdir()
    loop = create_loopback_dir(tmp_path / "loop", data_size=4 << 20)
    transport = LoopbackTransport(loop)
    options = Options(root=str(root), use_uring=request.param == "uring")
    options.fast_path = not PYTHON_ENGINE
    driver = Driver(transport, options)
    client = Client(PumpedTransport(LoopbackClientTransport(loop), driver), timeout=5)
    try:  # closed even when a check fails: a driver left open crashes the interpreter later
        assert client.initialise().ok
        yield client, root
        assert client.pending_completions() == {}, "a command was answered more than once"
    finally:
        driver.close()
        transport.close()
        client.close_transport()
