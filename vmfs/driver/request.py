"""One command's life in the driver: the record the state machine and the commands share."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from vmfs.wire import Status

Steps = Generator[tuple[Any, ...], int, None]


class Request:
    """One command's life in the driver; preallocated per queue slot and reused."""

    __slots__ = (
        "cmd",
        "data",
        "id",
        "index",
        "keep",
        "params",
        "started",
        "state",
        "status",
        "steps",
        "synchronous",
    )

    def __init__(self) -> None:
        self.index = 0
        self.id = 0
        self.cmd = 0
        self.params: tuple[int, ...] = ()
        self.state = 0
        self.status = 0
        self.data = 0
        self.steps: Steps | None = None
        self.keep: Any = None
        self.started = 0
        self.synchronous = False

    def finish(self, status: Status | int, data: int = 0) -> None:
        self.status = int(status)
        self.data = data if status == Status.SUCCESS else 0
