"""Counters the driver keeps: ops by command and status, batch sizes, flushes, latency.

The arrays are C memory so the native serve loop (csrc/serve.c) counts into the same ones.
"""

from __future__ import annotations

from vmfs._native import ffi
from vmfs.wire import NUM_COMMANDS, NUM_STATUSES, Command, Status

LATENCY_BUCKETS = 40  # log2 buckets of nanoseconds: bucket k holds [2^k, 2^(k+1))


class Counters:
    def __init__(self) -> None:
        # (NUM_COMMANDS + 1) rows (the last: invalid command types) of NUM_STATUSES
        self.by_status = ffi.new("uint64_t[]", (NUM_COMMANDS + 1) * NUM_STATUSES)
        self.batches = ffi.new("uint64_t[]", 10)  # log2 buckets of a batch's commands
        self.flushes = 0
        self.latency = ffi.new("uint64_t[]", LATENCY_BUCKETS)

    @property
    def by_command(self) -> list[list[int]]:
        """Per command type (the last row: invalid types), completions per status."""
        flat = list(self.by_status)
        return [flat[row : row + NUM_STATUSES] for row in range(0, len(flat), NUM_STATUSES)]

    def completed(self, cmd: int, status: int, nanoseconds: int) -> None:
        self.by_status[(cmd if cmd < NUM_COMMANDS else NUM_COMMANDS) * NUM_STATUSES + status] += 1
        self.latency[min(max(nanoseconds, 1).bit_length() - 1, LATENCY_BUCKETS - 1)] += 1

    def batch(self, size: int) -> None:
        self.batches[min(size.bit_length() - 1, len(self.batches) - 1)] += 1

    @property
    def total(self) -> int:
        return sum(map(sum, self.by_command))

    def percentile(self, fraction: float) -> int:
        """Upper bound (ns) of the latency bucket holding the given fraction of requests."""
        total = sum(list(self.latency))
        if not total:
            return 0
        seen = 0
        for bucket, count in enumerate(list(self.latency)):
            seen += count
            if seen >= fraction * total:
                return 1 << (bucket + 1)
        return 1 << LATENCY_BUCKETS

    def report(self) -> str:
        """A few human-readable lines (printed on SIGUSR1 and at exit)."""
        lines = [f"commands completed: {self.total}, barrier flushes: {self.flushes}"]
        for cmd, row in enumerate(self.by_command):
            if not any(row):
                continue
            name = Command(cmd).name if cmd < NUM_COMMANDS else "INVALID"
            parts = ", ".join(f"{Status(s).name}={n}" for s, n in enumerate(row) if n)
            lines.append(f"  {name}: {parts}")
        sizes = ", ".join(
            f"{1 << k}{'+' if k == len(self.batches) - 1 else f'-{(2 << k) - 1}'}: {n}"
            for k, n in enumerate(list(self.batches))
            if n
        )
        lines.append(f"  batch sizes: {sizes or 'none'}")
        lines.append(
            "  latency (upper bounds): "
            f"p50 {self.percentile(0.5) / 1000:.0f} us, p99 {self.percentile(0.99) / 1000:.0f} us"
        )
        return "\n".join(lines)
