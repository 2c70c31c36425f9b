"""The store's transaction plumbing: the awaitable connection every store method writes its SQL
against, and its SQLite implementation.

Every store method is `async` and speaks to one small interface: `async with self._write() as db`
(one write transaction) and `await self._read(sql, params)`, where `await db.execute(sql, params)`
returns a cursor whose `fetchone`, `fetchall` and `rowcount` need no more I/O. SQLite implements
it here; the PostgreSQL store (`_pg.py`) implements the same three calls on psycopg's async
connections, so both run the same methods and the same SQL.

SQLite stays on the event loop: a statement on a local file takes microseconds, less than a hop
to a worker thread would. The one wait that can be long is another process's write lock
(`--workers N` share one file): SQLite's own busy handler would sleep inside `BEGIN IMMEDIATE`
and stall every stream of this process meanwhile, so the connection's busy timeout is 0 and a
busy `BEGIN` (or a busy read) is retried after an `asyncio.sleep`, until `busy_timeout`. A
transaction body awaits nothing but its statements, which never suspend on SQLite: so one
process's transactions never interleave on its one connection, and need no lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol

__all__ = ["Cursor", "Db", "StoreBase"]

#: SQLITE_BUSY; its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, ...) share the low byte
_SQLITE_BUSY = 5
#: the longest sleep between two tries of a busy file
_MAX_BACKOFF = 0.05


class Cursor(Protocol):
    """A finished statement: its rows (by name and by position) and how many rows it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """The connection a write transaction's body uses."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


def is_busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == _SQLITE_BUSY


class _Backoff:
    """Sleeps of 1, 2, 4 ... 50 ms until `timeout` seconds have passed since the first."""

    __slots__ = ("_deadline", "_delay")

    def __init__(self, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout
        self._delay = 0.001

    async def wait(self, exc: sqlite3.Error) -> None:
        """Sleep before the next try; re-raises `exc` once the time is up."""
        if time.monotonic() >= self._deadline:
            raise exc
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, _MAX_BACKOFF)


class _SqliteDb:
    """A `sqlite3.Connection` behind the awaitable `Db` interface (the awaits never suspend)."""

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._db.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)


class _SqliteWrite:
    """One short `BEGIN IMMEDIATE` transaction (the write lock up front, so it cannot deadlock)."""

    __slots__ = ("_durable", "_store")

    def __init__(self, store: StoreBase, durable: bool) -> None:
        self._store = store
        self._durable = durable

    async def __aenter__(self) -> Db:
        store = self._store
        db = store._db
        if db.in_transaction:
            raise RuntimeError("a store transaction body awaited something besides its statements")
        backoff: _Backoff | None = None
        while True:
            # FULL is set and reset with no await in between, so it is never another task's
            if self._durable:
                db.execute("PRAGMA synchronous = FULL")
            try:
                db.execute("BEGIN IMMEDIATE")
                return store._adb
            except sqlite3.OperationalError as exc:
                if self._durable:
                    db.execute("PRAGMA synchronous = NORMAL")
                if not is_busy(exc):
                    raise
                backoff = backoff or _Backoff(store._busy_timeout)
                await backoff.wait(exc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db = self._store._db
        try:
            if exc_type is None:
                try:
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            else:
                db.execute("ROLLBACK")
        finally:
            if self._durable:
                db.execute("PRAGMA synchronous = NORMAL")


class StoreBase:
    """The transaction plumbing every store method uses; SQLite's implementation (one
    connection, used by one event loop)."""

    _db: sqlite3.Connection
    _adb: Db
    #: seconds to keep trying a file another process holds the write lock of
    _busy_timeout: float

    def _write(self, *, durable: bool = False) -> AbstractAsyncContextManager[Db]:
        """One short write transaction, serialized with every other writer of the store.

        `durable`: fsync the WAL at commit (synchronous=FULL). Only token rotations need it —
        losing one kills the account — while counters, exchanges and the deletion queue can
        lose their last writes on power loss; an fsync costs ~4 ms of a blocked event loop.
        """
        return _SqliteWrite(self, durable)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        backoff: _Backoff | None = None
        while True:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:  # WAL readers are rarely busy (recovery)
                if not is_busy(exc):
                    raise
                backoff = backoff or _Backoff(self._busy_timeout)
                await backoff.wait(exc)
