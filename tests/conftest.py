"""Shared fixtures: a served root with a driver subprocess and a connected client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmfs.client import Client, LoopbackServer


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

    def signal(self) -> None:
        self.inner.signal()

    def wait(self, timeout: float | None) -> bool:
        self.driver.engine.pump()
        self.driver.engine.flush()
        return bool(self.driver.engine.pump() or True)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(params=["uring", "sync"])
def local(request, tmp_path) -> Iterator[tuple[Client, Path]]:
    """(client, root) with an in-process, initialised driver: io_uring and synchronous modes."""
    from vmfs.client_transport import LoopbackClientTransport, create_loopback_dir
    from vmfs.driver import Driver, Options
    from vmfs.uio import LoopbackTransport

    root = tmp_path / "root"
    root.mkdir()
    loop = create_loopback_dir(tmp_path / "loop", data_size=4 << 20)
    transport = LoopbackTransport(loop)
    driver = Driver(transport, Options(root=str(root), use_uring=request.param == "uring"))
    client = Client(PumpedTransport(LoopbackClientTransport(loop), driver), timeout=5)
    assert client.initialise().ok
    yield client, root
    assert client.pending_completions() == {}, "a command was answered more than once"
    driver.close()
    transport.close()
    client.close_transport()
