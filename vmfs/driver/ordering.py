"""What in-flight requests touch, so a new request waits only for work it could observe.

Each command declares claims: (object, first byte, end byte, access). Objects are a file's
(st_dev, st_ino), the namespace, or ANY_FILE (STAT reads every file's size and times). A file's
size is claimed like one more byte of the file, at offset SIZE: a read that reaches past the
size known at submission reads it, FILE_SIZE reads it, an extending write GROWs it, a truncate
(a WHOLE_FILE write) sets it. Two claims conflict when they name the same object, their ranges
overlap, and they are not both READs or both GROWs: growths commute (the size becomes the
largest end either way), a read of the size does not commute with any change of it. ANY_FILE
conflicts with every file write or growth. A request whose claims conflict with in-flight work
enters barrier_wait and the ring is flushed first; queue order is thereby preserved wherever
it could be observed.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "namespace"
ANY_FILE = "any-file"
READ, WRITE, GROW = 0, 1, 2
SIZE = 1 << 64  # where a file's size is claimed, past every byte a file can have
WHOLE_FILE = SIZE + 1  # every byte and the size
Claim = tuple[Any, int, int, int]  # (object, first byte, end byte, READ / WRITE / GROW)
NAMESPACE_READ: tuple[Claim, ...] = ((NAMESPACE, 0, 1, READ),)
NAMESPACE_WRITE: tuple[Claim, ...] = ((NAMESPACE, 0, 1, WRITE),)
STAT_CLAIMS: tuple[Claim, ...] = ((NAMESPACE, 0, 1, READ), (ANY_FILE, 0, WHOLE_FILE, READ))


def transfer_claims(
    key: Any, position: int, length: int, writing: bool, size: int
) -> tuple[Claim, ...]:
    """A FILE_READ or FILE_WRITE of [position, position + length) of a file `size` bytes long
    at submission: its bytes, and the size if it reaches past it (a read's length depends on
    the size there, a write there grows it)."""
    end = position + length
    data = (key, position, end, WRITE if writing else READ)
    if end <= size:
        return (data,)
    return (data, (key, SIZE, SIZE + 1, GROW if writing else READ))


def size_read(key: Any) -> tuple[Claim, ...]:
    return ((key, SIZE, SIZE + 1, READ),)


class InFlight:
    """The claims of every request currently on the ring, by request slot."""

    def __init__(self, slots: int) -> None:
        self._by_object: dict[Any, list[tuple[int, int, int, int]]] = {}
        self._by_slot: list[tuple[Claim, ...] | None] = [None] * slots
        self.any_file_readers = 0
        self.file_writers = 0  # file claims that write or grow

    def conflicts(self, claims: tuple[Claim, ...]) -> bool:
        for key, lo, hi, access in claims:
            if key is ANY_FILE:
                if self.file_writers:
                    return True
                continue
            if access and key != NAMESPACE and self.any_file_readers:
                return True
            for lo2, hi2, access2, _ in self._by_object.get(key, ()):
                if lo < hi2 and lo2 < hi and (access != access2 or access == WRITE):
                    return True
        return False

    def claim(self, slot: int, claims: tuple[Claim, ...] | None) -> None:
        self._by_slot[slot] = claims
        for key, lo, hi, access in claims or ():
            if key is ANY_FILE:
                self.any_file_readers += 1
                continue
            if access and key != NAMESPACE:
                self.file_writers += 1
            self._by_object.setdefault(key, []).append((lo, hi, access, slot))

    def release(self, slot: int) -> None:
        claims = self._by_slot[slot]
        if claims is None:
            return
        self._by_slot[slot] = None
        for key, _, _, access in claims:
            if key is ANY_FILE:
                self.any_file_readers -= 1
                continue
            if access and key != NAMESPACE:
                self.file_writers -= 1
            held = self._by_object.get(key)
            if held is None:  # gone with this request's other claim on the same object
                continue
            held[:] = [c for c in held if c[3] != slot]
            if not held:
                del self._by_object[key]
