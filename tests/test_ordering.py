"""The claim rule: what conflicts with what, a file's size included."""

from __future__ import annotations

from vmfs.driver.ordering import (
    ANY_FILE,
    GROW,
    NAMESPACE,
    READ,
    SIZE,
    STAT_CLAIMS,
    WHOLE_FILE,
    WRITE,
    InFlight,
    size_read,
    transfer_claims,
)

FILE = (1, 2)
OTHER = (1, 3)


def in_flight(*claims_per_slot: tuple) -> InFlight:
    flight = InFlight(8)
    for slot, claims in enumerate(claims_per_slot):
        flight.claim(slot, claims)
    return flight


def test_a_range_within_the_size_claims_only_its_bytes() -> None:
    assert transfer_claims(FILE, 0, 100, False, 100) == ((FILE, 0, 100, READ),)
    assert transfer_claims(FILE, 10, 10, True, 100) == ((FILE, 10, 20, WRITE),)


def test_a_range_past_the_size_claims_the_size_too() -> None:
    assert transfer_claims(FILE, 150, 10, False, 100)[1] == (FILE, SIZE, SIZE + 1, READ)
    assert transfer_claims(FILE, 200, 10, True, 100)[1] == (FILE, SIZE, SIZE + 1, GROW)


def test_a_read_of_the_gap_waits_for_the_extending_write() -> None:
    flight = in_flight(transfer_claims(FILE, 200, 10, True, 100))
    assert flight.conflicts(transfer_claims(FILE, 150, 10, False, 100))
    assert not flight.conflicts(transfer_claims(FILE, 0, 100, False, 100))
    assert not flight.conflicts(transfer_claims(OTHER, 150, 10, False, 100))


def test_an_extending_write_waits_for_a_read_past_the_end() -> None:
    flight = in_flight(transfer_claims(FILE, 0, 1000, False, 100))
    assert flight.conflicts(transfer_claims(FILE, 5000, 10, True, 100))


def test_extending_writes_commute_with_each_other_not_with_size_readers() -> None:
    flight = in_flight(transfer_claims(FILE, 300, 10, True, 100))
    assert not flight.conflicts(transfer_claims(FILE, 200, 10, True, 100))
    assert flight.conflicts(size_read(FILE))
    assert flight.conflicts(STAT_CLAIMS)


def test_truncate_conflicts_with_everything_on_its_file() -> None:
    flight = in_flight(((FILE, 0, WHOLE_FILE, WRITE),))
    assert flight.conflicts(transfer_claims(FILE, 0, 10, False, 100))
    assert flight.conflicts(transfer_claims(FILE, 10, 10, True, 100))
    assert flight.conflicts(size_read(FILE))


def test_size_reads_share() -> None:
    assert not in_flight(size_read(FILE)).conflicts(size_read(FILE))
    assert not in_flight(size_read(FILE)).conflicts(transfer_claims(FILE, 0, 10, True, 100))


def test_release_frees_every_claim_of_a_request() -> None:
    flight = in_flight(transfer_claims(FILE, 200, 10, True, 100), STAT_CLAIMS)
    flight.release(0)
    flight.release(1)
    assert flight.file_writers == 0 and flight.any_file_readers == 0
    assert not flight.conflicts(((FILE, 0, WHOLE_FILE, WRITE), (NAMESPACE, 0, 1, WRITE)))
    assert not flight.conflicts(((ANY_FILE, 0, WHOLE_FILE, READ),))
