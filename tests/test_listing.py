"""Directories of any size: listings stream, memory stays bounded, nothing is cut off.

Every listing here is read through the protocol from a `vmfs serve` subprocess; what is expected
comes from the names the test created.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_helpers import assert_no_extra_completions, rss_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from listing_helpers import (
    END_OF_DIRECTORY,
    SUCCESS,
    Reader,
    close_all,
    entry_name,
    make_names,
    memory_tmpdir,
    open_many,
    output_area,
)

from vmfs.client import Client, LoopbackServer

BIG = 200_000
HUGE = 1_200_000
TOO_MANY_OPEN_FILES = 8
# 64 listings of a 200 000-entry directory, 1000 names into each, may add this much RSS.
SIXTY_FOUR_LISTINGS_BUDGET = 16 << 20
# A full handle table of listings on the biggest directory: each holds ~10 KiB, not the names.
FULL_TABLE_BUDGET = 32 << 20


def driver_pid(server: LoopbackServer) -> int:
    assert server.process is not None and server.process.poll() is None
    return server.process.pid


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackServer, set[bytes]]]:
    """A served root holding /big with 200 000 names (and /small with 10)."""
    with memory_tmpdir(tmp_path_factory.mktemp("big")) as base:
        names = make_names(base / "root" / "big", BIG)
        make_names(base / "root" / "small", 10)
        with LoopbackServer(root=base / "root", directory=base / "loop") as server:
            assert server.client.initialise().ok
            yield server, names


@pytest.fixture(scope="module")
def reference_order(big: tuple[LoopbackServer, set[bytes]]) -> list[bytes]:
    """/big read start to end by DIR_READ alone: the order the seeks must agree with."""
    client = big[0].client
    opened = client.opendir("/big")
    assert opened.ok
    names = Reader(client, opened.data, 1 << 40, output_area(client)).read_all()
    assert client.closedir(opened.data).ok
    return names


def test_full_listing_returns_every_name_once(
    big: tuple[LoopbackServer, set[bytes]], reference_order: list[bytes]
) -> None:
    _, names = big
    assert len(reference_order) == len(names) == BIG
    assert set(reference_order) == names


def test_listing_ends_and_stays_ended(big: tuple[LoopbackServer, set[bytes]]) -> None:
    client = big[0].client
    opened = client.opendir("/small")
    reader = Reader(client, opened.data, 2 << 40, output_area(client))
    assert sorted(reader.read(20)) == sorted(entry_name(n).encode() for n in range(10))
    assert reader.ended
    for _ in range(3):
        done, name = client.readdir(opened.data)
        assert done.status == END_OF_DIRECTORY and done.data == 0 and name is None
    assert client.telldir(opened.data).data == 10
    assert client.closedir(opened.data).ok


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.one_of(
                st.integers(0, BIG + 10),
                st.integers(0, 2000),  # the first chunks, where cookies are dense
                st.sampled_from([255, 256, 257, 65_535, 65_536, 65_537, BIG - 1, BIG]),
            ),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_seek_returns_entry_n(
    big: tuple[LoopbackServer, set[bytes]], reference_order: list[bytes], steps: list
) -> None:
    """DIR_SEEK n then DIR_READ gives entry n of the listing order, forwards and backwards,
    past what was read so far, and across chunk boundaries; DIR_TELL follows."""
    client = big[0].client
    opened = client.opendir("/big")
    assert opened.ok
    handle = opened.data
    try:
        for target, reads in steps:
            assert client.seekdir(handle, target).ok
            position = min(target, BIG)
            assert client.telldir(handle).data == position
            for k in range(reads):
                done, name = client.readdir(handle)
                if position + k < BIG:
                    assert done.status == SUCCESS and name == reference_order[position + k], (
                        target,
                        k,
                    )
                else:
                    assert done.status == END_OF_DIRECTORY
            assert client.telldir(handle).data == min(position + reads, BIG)
    finally:
        assert client.closedir(handle).ok


def test_rewind_starts_again(
    big: tuple[LoopbackServer, set[bytes]], reference_order: list[bytes]
) -> None:
    client = big[0].client
    handle = client.opendir("/big").data
    reader = Reader(client, handle, 3 << 40, output_area(client))
    assert reader.read(700) == reference_order[:700]
    assert client.rewinddir(handle).ok
    assert client.telldir(handle).data == 0
    assert reader.read(300) == reference_order[:300]
    assert client.closedir(handle).ok


def test_open_and_stat_in_one_batch_do_not_wait_for_the_listing(
    big: tuple[LoopbackServer, set[bytes]],
) -> None:
    """DIR_OPEN of a big directory reads nothing: a STAT queued behind it is answered, and the
    handle then lists the whole directory."""
    server, names = big
    client = server.client
    handles = [c.data for c in open_many(client, b"/big", 4, 4 << 40) if c.status == SUCCESS]
    assert len(handles) == 4
    assert client.stat("/small")[0].ok
    assert set(Reader(client, handles[0], 5 << 40, output_area(client)).read_all()) == names
    assert all(c.ok for c in close_all(client, handles, 6 << 40))


def test_64_listings_of_a_big_directory_take_little_memory(
    big: tuple[LoopbackServer, set[bytes]], reference_order: list[bytes]
) -> None:
    server, _ = big
    client = server.client
    pid = driver_pid(server)
    rss_before = rss_bytes(pid)
    handles = [c.data for c in open_many(client, b"/big", 64, 7 << 40)]
    out = output_area(client)
    for n, handle in enumerate(handles):
        assert (
            Reader(client, handle, (8 << 40) + (n << 20), out).read(1000)
            == (reference_order[:1000])
        )
    grown = rss_bytes(pid) - rss_before
    print(f"64 listings, 1000 names read from each: driver RSS +{grown / 2**20:.2f} MiB")
    assert grown <= SIXTY_FOUR_LISTINGS_BUDGET, grown
    assert all(c.ok for c in close_all(client, handles, 9 << 40))
    assert_no_extra_completions(client)


def test_full_handle_table_of_big_listings_does_not_exhaust_memory(
    big: tuple[LoopbackServer, set[bytes]],
) -> None:
    """A hostile client opens the big directory until the table is full and starts every
    listing: memory grows by the handles' small buffers, and the driver keeps serving."""
    server, _ = big
    client = server.client
    pid = driver_pid(server)
    rss_before = rss_bytes(pid)
    opened = open_many(client, b"/big", 1100, 10 << 40)
    handles = [c.data for c in opened if c.status == SUCCESS]
    assert {c.status for c in opened} == {SUCCESS, TOO_MANY_OPEN_FILES}
    out = output_area(client)
    for n, handle in enumerate(handles):
        assert len(Reader(client, handle, (11 << 40) + (n << 20), out).read(3)) == 3
    grown = rss_bytes(pid) - rss_before
    print(f"{len(handles)} listings started: driver RSS +{grown / 2**20:.2f} MiB")
    assert grown <= FULL_TABLE_BUDGET, grown
    assert client.stat("/small")[0].ok
    assert all(c.ok for c in close_all(client, handles, 12 << 40))
    assert client.opendir("/small").ok
    assert_no_extra_completions(client)


def test_names_present_throughout_are_listed_once_while_others_come_and_go(
    big: tuple[LoopbackServer, set[bytes]], tmp_path: Path
) -> None:
    """POSIX readdir's rule: a name present for the whole listing is returned exactly once; one
    added or removed meanwhile may or may not be, and nothing else shows up."""
    server, _ = big
    client = server.client
    churn = server.root / "churn"
    stable = make_names(churn, 3000)
    doomed = sorted(stable)[::3]
    stable -= set(doomed)
    handle = client.opendir("/churn").data
    reader = Reader(client, handle, 13 << 40, output_area(client))
    listed = reader.read(1000)
    added = set()
    for n in range(3000, 4500):
        name = f"new-{n}"
        os.close(os.open(churn / name, os.O_CREAT | os.O_WRONLY, 0o644))
        added.add(name.encode())
    for name in doomed:
        os.unlink(churn / name.decode())
    listed += reader.read_all()
    assert all(listed.count(name) == 1 for name in stable)
    assert set(listed) <= stable | set(doomed) | added
    assert len(listed) == len(set(listed))
    assert client.closedir(handle).ok


@pytest.mark.slow
def test_directory_of_1_2_million_entries_lists_completely(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with memory_tmpdir(tmp_path_factory.mktemp("huge")) as base:
        t0 = time.monotonic()
        names = make_names(base / "root" / "huge", HUGE)
        t1 = time.monotonic()
        with LoopbackServer(root=base / "root", directory=base / "loop") as server:
            client: Client = server.client
            assert client.initialise().ok
            opened = client.opendir("/huge")
            assert opened.ok
            listed = Reader(client, opened.data, 1 << 40, output_area(client)).read_all()
            t2 = time.monotonic()
            assert len(listed) == HUGE
            assert set(listed) == names
            assert client.telldir(opened.data).data == HUGE
            assert client.closedir(opened.data).ok
        print(
            f"1.2M names: made in {t1 - t0:.1f} s, listed through the protocol in {t2 - t1:.1f} s"
        )
