"""Shared fixtures: a served root with a driver subprocess and a connected client."""

from __future__ import annotations

from collections.abc import Iterator

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
