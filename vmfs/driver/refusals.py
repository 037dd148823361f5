"""A log line for each refused or failed command, rate-limited so a hostile flood of bad
commands cannot fill the disk: the first few per second are logged, the rest are counted and
the count is logged once the second is over."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from vmfs.wire import NUM_COMMANDS, Command, Status

log = logging.getLogger("vmfs.refused")

PER_SECOND = 10
WINDOW = 1.0
NOT_REFUSALS = frozenset({Status.SUCCESS, Status.END_OF_DIRECTORY})


class RefusalLog:
    """Called with each completed request whose status is not SUCCESS.

    Default: one line per refusal (command, id, status). With `detail` (`vmfs -v`) the line
    also has the command's parameters (integers only: names and data stay in the share).
    """

    def __init__(
        self,
        per_second: int = PER_SECOND,
        detail: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.detail = detail
        self.clock = clock
        self.window_start = clock()
        self.logged = 0
        self.suppressed = 0

    def __call__(self, req: Any) -> None:
        if req.status in NOT_REFUSALS:
            return
        self.roll()
        if self.logged >= self.per_second:
            self.suppressed += 1
            return
        self.logged += 1
        name = Command(req.cmd).name if req.cmd < NUM_COMMANDS else f"unknown type {req.cmd}"
        status = Status(req.status).name if req.status < len(Status) else str(req.status)
        if self.detail:
            log.warning(
                "refused: command %d (id %d) %s -> %s, parameters %s",
                req.index,
                req.id,
                name,
                status,
                tuple(req.params),
            )
        else:
            log.warning("refused: command %d (id %d) %s -> %s", req.index, req.id, name, status)

    def roll(self, final: bool = False) -> None:
        """Start a new window once the current one is over (or now, when `final`), reporting
        what the window left unlogged."""
        now = self.clock()
        if now - self.window_start < WINDOW and not final:
            return
        if self.suppressed:
            log.warning(
                "refused: %d more commands in %.1f s not logged (limit %d per second)",
                self.suppressed,
                now - self.window_start,
                self.per_second,
            )
        self.window_start = now
        self.logged = 0
        self.suppressed = 0
