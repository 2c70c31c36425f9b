"""The account store in PostgreSQL (`--store postgresql://user:pass@host/db`), for several hosts.

It IS the SQLite store (`Store`): the same methods and the same SQL, run through a connection
adapter that speaks PostgreSQL, so the two cannot drift apart. The guarantees carry over because
they rest on one property, which the adapter keeps: **write transactions are serialized**.
SQLite gets it from `BEGIN IMMEDIATE` (one writer per file); here every write transaction first
takes one transaction-scoped advisory lock (`pg_advisory_xact_lock`), held until its COMMIT or
ROLLBACK, by every process on every host. So, as with SQLite:

- a token rotation is committed (PostgreSQL commits are durable) before the new access token is
  returned and used;
- the refresh lock (`_store_locks.py`: read the row, then take it, in one write transaction) lets
  exactly one process refresh an account at a time across hosts;
- a cleanup pass claims each due conversation in one write transaction (`claim_due_deletions`),
  so no two processes delete the same conversation.

Calls stay synchronous, as the store's interface is (the relay calls it from the event loop, and
each call is a primary-key statement of well under a millisecond on a nearby server). psycopg 3
(`pip install 'kimi-free-api[postgresql]'`) is imported only when such a store is opened.

The SQL translation is small and mechanical: `?` → `%s`, `INSERT OR IGNORE` → `ON CONFLICT DO
NOTHING`, `INSERT OR REPLACE` → `ON CONFLICT (primary key) DO UPDATE` (columns it does not list go
back to their defaults, as SQLite's delete-and-insert does), `IS NOT ?` → `IS DISTINCT FROM`,
`REAL` → `DOUBLE PRECISION` in the schema. The schema version lives in `kimi_schema_version`.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from addon.accounts._secrets import new_salt

from ._records import MIGRATIONS, SCHEMA_VERSION
from ._store import Store, StoreError

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


def open_store(location: str) -> Store:
    """A store for `--store`: a PostgreSQL URL, else a SQLite file path (`~` expanded)."""
    if is_postgres_url(location):
        return PgStore(location)
    import os

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
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self.rowcount: int = cursor.rowcount

    def _rows(self, raw: Sequence[Sequence[Any]]) -> list[_Row]:
        names = [d.name for d in self._cursor.description or ()]
        return [_Row(names, values) for values in raw]

    def fetchone(self) -> _Row | None:
        if self._cursor.description is None:
            return None
        row = self._cursor.fetchone()
        return None if row is None else self._rows([row])[0]

    def fetchall(self) -> list[_Row]:
        if self._cursor.description is None:
            return []
        return self._rows(self._cursor.fetchall())


class _Connection:
    """The slice of `sqlite3.Connection` the store uses, on a psycopg connection."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        #: every table's columns (for `INSERT OR REPLACE`), read after the migrations
        self._columns: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def set_columns(self, columns: Mapping[str, Sequence[str]]) -> None:
        self._columns = tuple(sorted((t, tuple(c)) for t, c in columns.items()))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        cursor = self._conn.cursor()
        cursor.execute(self.translate(sql), tuple(params))
        return _Cursor(cursor)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self._conn.cursor() as cursor:
                cursor.executemany(self.translate(sql), [tuple(r) for r in rows])

    def close(self) -> None:
        self._conn.close()

    def translate(self, sql: str) -> str:
        return _translate(sql, self._columns)


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
    """The account store in a PostgreSQL database (see the module doc).

    Raises:
        StoreError: psycopg is missing, the server cannot be reached, or the database holds a
            newer schema.
    """

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.path = safe_url(url)
        self._lock = threading.Lock()
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                "a postgresql:// store needs psycopg: pip install 'kimi-free-api[postgresql]'"
            ) from exc
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=int(connect_timeout))
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot open the account store {self.path}: {type(exc).__name__}"
            ) from None
        self._db = _Connection(conn)  # type: ignore[assignment]
        try:
            self._migrate()
            self._pg.set_columns(self._table_columns())
        except psycopg.Error as exc:
            self._db.close()
            raise StoreError(f"the account store {self.path} is not usable: {exc}") from None
        except StoreError:
            self._db.close()
            raise
        row = self._read("SELECT value FROM meta WHERE key = 'salt'")
        self._salt = bytes.fromhex(row[0]["value"])

    @property
    def _pg(self) -> _Connection:
        db: Any = self._db  # declared as sqlite3.Connection by the SQLite store
        return cast(_Connection, db)

    def _table_columns(self) -> dict[str, list[str]]:
        rows = self._read(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
        columns: dict[str, list[str]] = {}
        for row in rows:
            columns.setdefault(row["table_name"], []).append(row["column_name"])
        return columns

    @contextlib.contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[Any]:
        """One write transaction, serialized with every other one on the database (the
        advisory lock). Every PostgreSQL commit is durable, so `durable` needs nothing more."""
        with self._lock:
            db = self._pg
            try:
                # one round trip: BEGIN and the lock (no parameters: the simple query protocol)
                db.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
                yield db
            except BaseException:
                with contextlib.suppress(Exception):  # a lost connection cannot roll back
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._pg.execute(sql, params).fetchall()

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS kimi_schema_version (version INTEGER NOT NULL)"
            )
            row = db.execute("SELECT version FROM kimi_schema_version").fetchone()
            version = 0 if row is None else int(row["version"])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the account store {self.path} has schema version {version}; this release "
                    f"knows up to {SCHEMA_VERSION}: upgrade kimi-free-api or use another database"
                )
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement))
            if row is None:
                db.execute(
                    "INSERT INTO kimi_schema_version (version) VALUES (?)", (SCHEMA_VERSION,)
                )
            elif version != SCHEMA_VERSION:
                db.execute("UPDATE kimi_schema_version SET version = ?", (SCHEMA_VERSION,))
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('salt', ?)", (new_salt().hex(),)
            )

    @property
    def schema_version(self) -> int:
        return int(self._read("SELECT version FROM kimi_schema_version")[0][0])
