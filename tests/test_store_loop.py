"""No store call blocks the event loop while it waits for the database.

Another connection (in a thread: its own clock, untouched by the loop) holds the store's write
lock for `HOLD` seconds: PostgreSQL's advisory lock, or SQLite's write lock on the file (what
another `--workers` process would hold). Meanwhile a store write is in flight, and a task that
ticks every 10 ms must keep ticking: no gap of `MAX_GAP` or more. The positive controls do the
same wait the blocking way (a synchronous driver call in the loop, as the store did before) and
see the loop stand still for most of `HOLD`: so the test tells the two apart, with margins
wide enough for a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from addon.store._pg import WRITE_LOCK, PgStore
from addon.store._store import Store

HOLD = 1.5  #: seconds the other connection holds the write lock
MAX_GAP = 0.5  #: the loop must never stand still this long while a store write waits
BLOCKED = 1.0  #: what the blocking way stands still for, at least


class Holder(threading.Thread):
    """Takes the write lock with `take()`, sets `held`, keeps it `HOLD` seconds, releases."""

    def __init__(self, take: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._take = take
        self.held = threading.Event()
        self.released_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            release = self._take()
            self.held.set()
            time.sleep(HOLD)
            self.released_at = time.monotonic()
            release()
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc
            self.held.set()


async def longest_gap_while(work: Awaitable[Any]) -> tuple[float, Any]:
    """Run `work` while a task ticks every 10 ms; the longest gap between two ticks, and what
    `work` returned."""
    ticks: list[float] = [time.monotonic()]
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks.append(time.monotonic())

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)  # the ticker is running
    try:
        result = await work
    finally:
        stop.set()
        await ticker
    return max(b - a for a, b in itertools.pairwise(ticks)), result


async def wait_held(holder: Holder) -> None:
    holder.start()
    while not holder.held.is_set():
        await asyncio.sleep(0.01)
    assert holder.error is None


# -- PostgreSQL -----------------------------------------------------------------------------


def pg_holder(url: str) -> Holder:
    def take() -> Callable[[], None]:
        import psycopg

        conn = psycopg.connect(url, autocommit=True)
        conn.execute("BEGIN")
        conn.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")

        def release() -> None:
            conn.execute("COMMIT")
            conn.close()

        return release

    return Holder(take)


@pytest.fixture
def pg_url(postgres_server):
    return postgres_server.new_database()


async def test_a_postgres_write_waiting_for_the_lock_leaves_the_loop_running(pg_url):
    store = await PgStore.connect(pg_url)
    try:
        account = await store.account_for_token("rt-loop-1", now=1.0)
        holder = pg_holder(pg_url)
        await wait_held(holder)

        async def write_and_read() -> tuple[float, float]:
            write = asyncio.create_task(store.count_request(account.id, now=2.0))
            # reads go on over the pool's other connections meanwhile
            read_at = time.monotonic()
            assert await store.get_account(account.id) is not None
            read_took = time.monotonic() - read_at
            await write
            return read_took, time.monotonic()

        gap, (read_took, written_at) = await longest_gap_while(write_and_read())
        holder.join(5)
        assert written_at >= holder.released_at  # the write did wait for the lock
        assert gap < MAX_GAP, f"the loop stood still {gap:.3f} s"
        assert read_took < MAX_GAP, f"a read waited {read_took:.3f} s behind the write"
        assert (await store.get_account(account.id)).view.requests == 1
    finally:
        await store.close()


async def test_positive_control_a_blocking_postgres_call_stalls_the_loop(pg_url):
    import psycopg

    await (await PgStore.connect(pg_url)).close()  # the schema
    holder = pg_holder(pg_url)
    await wait_held(holder)
    blocking = psycopg.connect(pg_url, autocommit=True)
    try:

        async def old_way() -> None:  # the store's write, on psycopg's synchronous API
            blocking.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
            blocking.execute("COMMIT")

        gap, _ = await longest_gap_while(old_way())
        holder.join(5)
        assert gap >= BLOCKED, f"the loop stood still only {gap:.3f} s"
    finally:
        blocking.close()


# -- SQLite ---------------------------------------------------------------------------------


def sqlite_holder(path: str) -> Holder:
    """Another process's write transaction, as a second connection to the file."""

    def take() -> Callable[[], None]:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")

        def release() -> None:
            conn.execute("COMMIT")
            conn.close()

        return release

    return Holder(take)


async def test_a_sqlite_write_waiting_for_another_writer_leaves_the_loop_running(tmp_path):
    path = str(tmp_path / "store.db")
    store = Store(path)
    try:
        account = await store.account_for_token("rt-loop-2", now=1.0)
        holder = sqlite_holder(path)
        await wait_held(holder)

        async def write() -> float:
            await store.count_request(account.id, now=2.0)
            return time.monotonic()

        gap, written_at = await longest_gap_while(write())
        holder.join(5)
        assert written_at >= holder.released_at  # the write did wait for the lock
        assert gap < MAX_GAP, f"the loop stood still {gap:.3f} s"
        assert (await store.get_account(account.id)).view.requests == 1
    finally:
        await store.close()


async def test_positive_control_sqlites_busy_handler_stalls_the_loop(tmp_path):
    path = str(tmp_path / "store.db")
    await Store(path).close()
    holder = sqlite_holder(path)
    await wait_held(holder)
    blocking = sqlite3.connect(path, timeout=10, isolation_level=None)  # the old busy_timeout
    try:

        async def old_way() -> None:
            blocking.execute("BEGIN IMMEDIATE")
            blocking.execute("COMMIT")

        gap, _ = await longest_gap_while(old_way())
        holder.join(5)
        assert gap >= BLOCKED, f"the loop stood still only {gap:.3f} s"
    finally:
        blocking.close()
