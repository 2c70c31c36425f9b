"""The account store in PostgreSQL (`--store postgresql://user:pass@host/db`), for several hosts.

It IS the SQLite store (`Store`): the same async methods and the same SQL, run through an
adapter that speaks PostgreSQL with psycopg 3's async API (`psycopg.AsyncConnection`), so the two
cannot drift apart and no call blocks the event loop while the server answers. The guarantees
carry over because they rest on one property, which the adapter keeps: **write transactions are
serialized**. SQLite gets it from `BEGIN IMMEDIATE` (one writer per file); here every write
transaction first takes one transaction-scoped advisory lock (`pg_advisory_xact_lock`), held
until its COMMIT or ROLLBACK, by every process on every host. So, as with SQLite:

- a token rotation is committed (PostgreSQL commits are durable) before the new access token is
  returned and used; a rotation (and every COMMIT) is shielded from cancellation, so a
  cancelled caller cannot lose it or leave it half-known;
- the refresh lock (`_locks.py`: read the row, then take it, in one write transaction) lets
  exactly one process refresh an account at a time across hosts;
- a cleanup pass claims each due conversation in one write transaction (`claim_due_deletions`),
  so no two processes delete the same conversation.

A process keeps a few connections (`pool_size`): its own write transactions take turns (an
asyncio lock; the server would serialize them anyway), so one write waiting for another host's
advisory lock holds one connection while reads go on over the others. A connection that broke
is dropped and a new one opened on next use. psycopg 3 (`pip install
'kimi-free-api[postgresql]'`) is imported only when such a store is opened
(`await PgStore.connect(url)`, or `await open_store(location)` for either kind).

The SQL translation is small and mechanical: `?` → `%s`, `INSERT OR IGNORE` → `ON CONFLICT DO
NOTHING`, `INSERT OR REPLACE` → `ON CONFLICT (primary key) DO UPDATE` (columns it does not list go
back to their defaults, as SQLite's delete-and-insert does), `IS NOT ?` → `IS DISTINCT FROM`,
`REAL` → `DOUBLE PRECISION` in the schema. The schema version lives in `kimi_schema_version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from addon.accounts._secrets import new_salt

from ._base import Cursor, Db
from ._records import MIGRATIONS, SCHEMA_VERSION
from ._store import Account, Store, StoreError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["PgStore", "is_postgres_url", "open_store", "safe_url"]

#: the advisory lock every write transaction holds (any fixed 64-bit number; "kimifree")
WRITE_LOCK = 0x6B696D6966726565

#: each table's primary key, for `INSERT OR REPLACE`
PRIMARY_KEYS: Mapping[str, str] = {
    "meta": "key",
    "accounts": "id",
    "token_fingerprints": "fingerprint",
    "gateway_keys": "key_hash",
    "exchanges": "key",
    "pending_deletions": "conversation_id",
    "refresh_locks": "account_id",
    "responses": "id",
}

_INSERT = re.compile(
    r"^\s*INSERT OR (REPLACE|IGNORE) INTO (\w+) \(([^)]*)\)(.*)$", re.DOTALL | re.IGNORECASE
)


def is_postgres_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


async def open_store(location: str) -> Store:
    """A store for `--store`: a PostgreSQL URL, else a SQLite file path (`~` expanded)."""
    if is_postgres_url(location):
        return await PgStore.connect(location)
    return Store(os.path.expanduser(location))


class _Row(dict[str, Any]):
    """A row readable by column name and by position, like `sqlite3.Row`."""

    __slots__ = ("_values",)

    def __init__(self, names: Sequence[str], values: Sequence[Any]) -> None:
        super().__init__(zip(names, values, strict=True))
        self._values = tuple(values)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return self._values[key]
        return super().__getitem__(key)


class _Cursor:
    """A finished statement's rows (all fetched) and row count, like a `sqlite3.Cursor`."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[_Row], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> _Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[_Row]:
        return self._rows


class _PgDb:
    """The `Db` interface (what a store transaction's body awaits) on one psycopg connection."""

    __slots__ = ("_columns", "_conn")

    def __init__(
        self, conn: AsyncConnection[Any], columns: tuple[tuple[str, tuple[str, ...]], ...]
    ) -> None:
        self._conn = conn
        self._columns = columns

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        async with self._conn.cursor() as cursor:
            await cursor.execute(_translate(sql, self._columns), tuple(params))
            if cursor.description is None:
                return _Cursor([], cursor.rowcount)
            names = [d.name for d in cursor.description]
            rows = [_Row(names, values) for values in await cursor.fetchall()]
            return _Cursor(rows, cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        params = [tuple(r) for r in rows]
        if params:
            async with self._conn.cursor() as cursor:
                await cursor.executemany(_translate(sql, self._columns), params)


@functools.lru_cache(maxsize=512)
def _translate(sql: str, columns: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    sql = sql.replace("%", "%%").replace("?", "%s")
    sql = re.sub(r"\bIS NOT %s", "IS DISTINCT FROM %s", sql)
    sql = sql.replace("LIMIT -1 OFFSET", "LIMIT ALL OFFSET")
    sql = re.sub(r"\bIN \(\)", "IN (NULL)", sql)  # an empty list matches nothing
    # SQLite's implicit row id orders rows by insertion; the physical row id is the nearest
    sql = re.sub(r"\browid\b", "ctid", sql)
    match = _INSERT.match(sql)
    if match is None:
        return sql
    mode, table, listed, rest = match.groups()
    head = f"INSERT INTO {table} ({listed}){rest.rstrip()}"
    if mode.upper() == "IGNORE":
        return head + " ON CONFLICT DO NOTHING"
    key = PRIMARY_KEYS[table]
    named = [c.strip() for c in listed.split(",")]
    updates = [f"{c} = EXCLUDED.{c}" for c in named if c != key]
    # SQLite's REPLACE deletes the old row: the columns the statement does not name are reset
    updates += [f"{c} = DEFAULT" for c in dict(columns).get(table, ()) if c not in named]
    if not updates:
        return head + " ON CONFLICT DO NOTHING"
    return head + f" ON CONFLICT ({key}) DO UPDATE SET " + ", ".join(updates)


class PgStore(Store):
    """The account store in a PostgreSQL database (see the module doc). Open it with
    `await PgStore.connect(url)`; its methods run on the event loop it was opened in.

    Raises:
        StoreError: psycopg is missing, the server cannot be reached, or the database holds a
            newer schema.
    """

    def __init__(self, url: str, *, connect_timeout: float = 10.0, pool_size: int = 4) -> None:
        """No I/O: `connect` opens the first connection and migrates the schema."""
        self.path = safe_url(url)
        self._url = url
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[AsyncConnection[Any]] = []
        self._writing = asyncio.Lock()
        self._closed = False
        #: every table's columns (for `INSERT OR REPLACE`), read after the migrations
        self._columns: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    async def connect(
        cls, url: str, *, connect_timeout: float = 10.0, pool_size: int = 4
    ) -> PgStore:
        store = cls(url, connect_timeout=connect_timeout, pool_size=pool_size)
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                "a postgresql:// store needs psycopg: pip install 'kimi-free-api[postgresql]'"
            ) from exc
        try:
            store._idle.append(await store._open())
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot open the account store {store.path}: {type(exc).__name__}"
            ) from None
        try:
            await store._migrate()
            store._columns = await store._table_columns()
            rows = await store._read("SELECT value FROM meta WHERE key = 'salt'")
        except psycopg.Error as exc:
            await store.close()
            raise StoreError(f"the account store {store.path} is not usable: {exc}") from None
        except BaseException:
            await store.close()
            raise
        store._salt = bytes.fromhex(rows[0]["value"])
        return store

    async def _open(self) -> AsyncConnection[Any]:
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=int(self._connect_timeout)
        )

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """An idle connection (opened when none is), given back when it is still sound."""
        import psycopg

        async with self._slots:
            if self._closed:
                raise StoreError(f"the account store {self.path} is closed")
            conn = self._idle.pop() if self._idle else await self._open()
            try:
                yield conn
            finally:
                sound = (
                    not conn.closed
                    and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                )
                if sound and not self._closed:
                    self._idle.append(conn)
                else:
                    await conn.close()

    async def _table_columns(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        rows = await self._read(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
        columns: dict[str, list[str]] = {}
        for row in rows:
            columns.setdefault(row["table_name"], []).append(row["column_name"])
        return tuple(sorted((t, tuple(c)) for t, c in columns.items()))

    @contextlib.asynccontextmanager
    async def _write(self, *, durable: bool = False) -> AsyncIterator[Db]:
        """One write transaction, serialized with every other one on the database (the
        advisory lock). Every PostgreSQL commit is durable, so `durable` needs nothing more."""
        async with self._writing, self._connection() as conn:
            db = _PgDb(conn, self._columns)
            # one round trip: BEGIN and the lock (no parameters: the simple query protocol)
            await db.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(Exception):  # a lost connection cannot roll back
                    await asyncio.shield(db.execute("ROLLBACK"))
                raise
            # Shielded: a caller cancelled now must not leave the commit half done (the
            # connection would go back to the pool in an unknown state, a rotation be lost).
            await asyncio.shield(db.execute("COMMIT"))

    async def record_rotation(
        self,
        account_id: str,
        *,
        refresh_token: str | None,
        access_token: str,
        access_expires_at: float,
        now: float,
    ) -> Account:
        """`Store.record_rotation`, shielded: Kimi has already rotated the token, so a caller
        cancelled meanwhile must not take the whole transaction down with it."""
        return await asyncio.shield(
            super().record_rotation(
                account_id,
                refresh_token=refresh_token,
                access_token=access_token,
                access_expires_at=access_expires_at,
                now=now,
            )
        )

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._connection() as conn:
            return (await _PgDb(conn, self._columns).execute(sql, params)).fetchall()

    async def _migrate(self) -> None:
        async with self._write() as db:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS kimi_schema_version (version INTEGER NOT NULL)"
            )
            row = (await db.execute("SELECT version FROM kimi_schema_version")).fetchone()
            version = 0 if row is None else int(row["version"])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the account store {self.path} has schema version {version}; this release "
                    f"knows up to {SCHEMA_VERSION}: upgrade kimi-free-api or use another database"
                )
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        await db.execute(re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement))
            if row is None:
                await db.execute(
                    "INSERT INTO kimi_schema_version (version) VALUES (?)", (SCHEMA_VERSION,)
                )
            elif version != SCHEMA_VERSION:
                await db.execute("UPDATE kimi_schema_version SET version = ?", (SCHEMA_VERSION,))
            await db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('salt', ?)", (new_salt().hex(),)
            )

    async def schema_version(self) -> int:
        return int((await self._read("SELECT version FROM kimi_schema_version"))[0][0])

    async def close(self) -> None:
        """Close every idle connection; one in use closes when it is given back (idempotent)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
