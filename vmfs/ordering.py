"""What in-flight requests touch, so a new request waits only for work it could observe.

Each command declares claims: (object, first byte, end byte, writes?). Objects are a file's
(st_dev, st_ino), the namespace, or ANY_FILE (STAT reads every file's size and times). Two
claims conflict when they name the same object, their ranges overlap and one of them writes;
ANY_FILE conflicts with every file write. A request whose claims conflict with in-flight work
enters barrier_wait and the ring is flushed first; queue order is thereby preserved wherever
it could be observed.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "namespace"
ANY_FILE = "any-file"
WHOLE_FILE = 1 << 64
Claim = tuple[Any, int, int, bool]  # (object, first byte, end byte, writes?)
NAMESPACE_READ: tuple[Claim, ...] = ((NAMESPACE, 0, 1, False),)
NAMESPACE_WRITE: tuple[Claim, ...] = ((NAMESPACE, 0, 1, True),)
STAT_CLAIMS: tuple[Claim, ...] = ((NAMESPACE, 0, 1, False), (ANY_FILE, 0, WHOLE_FILE, False))


class InFlight:
    """The claims of every request currently on the ring, by request slot."""

    def __init__(self, slots: int) -> None:
        self._by_object: dict[Any, list[tuple[int, int, bool, int]]] = {}
        self._by_slot: list[tuple[Claim, ...] | None] = [None] * slots
        self.any_file_readers = 0
        self.file_writers = 0

    def conflicts(self, claims: tuple[Claim, ...]) -> bool:
        for key, lo, hi, write in claims:
            if key is ANY_FILE:
                if self.file_writers:
                    return True
                continue
            if write and key != NAMESPACE and self.any_file_readers:
                return True
            for lo2, hi2, write2, _ in self._by_object.get(key, ()):
                if (write or write2) and lo < hi2 and lo2 < hi:
                    return True
        return False

    def claim(self, slot: int, claims: tuple[Claim, ...] | None) -> None:
        self._by_slot[slot] = claims
        for key, lo, hi, write in claims or ():
            if key is ANY_FILE:
                self.any_file_readers += 1
                continue
            if write and key != NAMESPACE:
                self.file_writers += 1
            self._by_object.setdefault(key, []).append((lo, hi, write, slot))

    def release(self, slot: int) -> None:
        claims = self._by_slot[slot]
        if claims is None:
            return
        self._by_slot[slot] = None
        for key, _, _, write in claims:
            if key is ANY_FILE:
                self.any_file_readers -= 1
                continue
            if write and key != NAMESPACE:
                self.file_writers -= 1
            held = self._by_object[key]
            held[:] = [c for c in held if c[3] != slot]
            if not held:
                del self._by_object[key]
