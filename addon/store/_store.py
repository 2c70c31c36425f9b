"""The persistent account store: Kimi accounts, their rotating tokens, gateway keys, multi-turn
exchanges and the conversation cleanup queue, in one SQLite file.

Why a store: Kimi's refresh token rotates on every use and has a single holder, so after the
proxy refreshes once the token a user pasted is dead. The proxy therefore owns the lifecycle: the
newest refresh token is written and committed here BEFORE the access token it came with is used,
and a client that keeps sending its original token is mapped to its account by a keyed
fingerprint of that token.

Several processes may share one file: WAL mode and short `BEGIN IMMEDIATE` transactions (no
I/O while a transaction is open). Every method is `async`, one interface for this store and the
PostgreSQL one (`_pg.py`, the same methods and SQL). Here the calls are cheap (primary-key
lookups and single-row updates) and run on the event loop directly, without a thread hop; only
waiting for another process's write lock leaves the loop (`_base.py`). A refresh runs under the
account's refresh lock (`_locks.py`), so processes never refresh the same account at once.
Token rotations commit with `synchronous=FULL` (losing one on power loss would kill the
account); every other write uses NORMAL, which in WAL mode does not fsync at each commit.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

from addon.accounts._secrets import constant_time_equal, fingerprint, hash_key, new_salt, redact

from ._admin import AdminMethods
from ._base import Db, _SqliteDb, is_busy
from ._locks import LockMethods
from ._meta import MetaMethods
from ._queues import QueueMethods
from ._records import (
    ACCOUNT_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    VIEW_COLUMNS,
    Account,
    AccountView,
    Exchange,
    GatewayKey,
    Health,
    PendingDeletion,
    Source,
    account_from_row,
    view_from_row,
)
from ._responses import ResponseMethods, StoredResponse

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Account",
    "AccountView",
    "Exchange",
    "GatewayKey",
    "Health",
    "PendingDeletion",
    "Store",
    "StoreError",
    "StoredResponse",
]


class StoreError(Exception):
    """The store file cannot be used (newer schema, unwritable path, corrupt file)."""


def _private_file(path: Path) -> None:
    """Create `path` (and its parents) readable by the owner only, before SQLite opens it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)  # an existing file made by hand may be wider


def new_account_id() -> str:
    """A stable, meaningless account id: "acc_" + 12 hex digits."""
    return "acc_" + secrets.token_hex(6)


# A client account is "unproven" until one refresh with its token succeeded (it then has an
# access-token expiry), and none is being refreshed now (no refresh lock). Junk tokens only
# ever make unproven rows, so these are what growth caps and expiry apply to.
_UNPROVEN = (
    "source = 'client' AND access_expires_at IS NULL"
    " AND id NOT IN (SELECT account_id FROM refresh_locks)"
)


class Store(QueueMethods, LockMethods, ResponseMethods, AdminMethods, MetaMethods):
    """The SQLite account store. One instance per process; several processes may share a file.

    Raises:
        StoreError: the file was written by a newer release, or cannot be opened.
    """

    #: seconds an account whose token never worked is kept (`prune_unproven_accounts`)
    UNPROVEN_TTL = 600.0
    #: the most unproven accounts kept: a new one makes room by dropping the oldest
    MAX_UNPROVEN = 1000

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = str(path)
        self._busy_timeout = busy_timeout
        memory = self.path == ":memory:"
        try:
            if not memory:
                _private_file(Path(self.path))
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the account store {self.path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._adb = _SqliteDb(self._db)
        try:
            # Opening may wait for another process's write lock (SQLite's busy handler): it
            # happens once, before this process serves anything.
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._wal_mode(busy_timeout)
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate_file()
            row = self._db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
            # From here on a busy file is waited for with asyncio.sleep (`_base.py`).
            self._db.execute("PRAGMA busy_timeout = 0")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"the account store {self.path} is not usable: {exc}") from exc
        except StoreError:
            self._db.close()
            raise
        if not memory:
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(self.path + suffix, 0o600)
        self._salt = bytes.fromhex(row["value"])

    # -- plumbing ---------------------------------------------------------------------------

    def _wal_mode(self, busy_timeout: float) -> None:
        """Switch the file to WAL. Two processes opening a new file at once (`--workers N`)
        both want its exclusive lock for this, and SQLite answers one of them "database is
        locked" at once instead of calling the busy handler (it would deadlock): so that one
        tries again, for up to `busy_timeout`. Blocking is fine here: nothing is served yet."""
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _migrate_file(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the account store {self.path} has schema version {version}; this release "
                    f"knows up to {SCHEMA_VERSION}: upgrade kimi-free-api or use another file"
                )
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('salt', ?)", (new_salt().hex(),)
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def schema_version(self) -> int:
        return int((await self._read("PRAGMA user_version"))[0][0])

    async def check_writable(self) -> None:
        """Take the write lock and commit a no-op (for `/readyz`).

        Raises:
            sqlite3.Error: the file cannot be written (read-only, disk full, locked too long).
        """
        async with self._write() as db:
            await db.execute("UPDATE meta SET value = value WHERE key = 'salt'")

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        self._db.close()

    # -- accounts ---------------------------------------------------------------------------

    def fingerprint(self, token: str) -> str:
        """The keyed fingerprint of a token under this store's secret."""
        return fingerprint(token, self._salt)

    async def _get(self, db: Db, account_id: str) -> Account:
        row = (
            await db.execute(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,))
        ).fetchone()
        if row is None:
            raise KeyError(account_id)
        return account_from_row(row)

    async def _insert_account(
        self,
        db: Db,
        *,
        label: str | None,
        source: Source,
        dialect: str | None,
        token: str,
        config_fp: str | None,
        now: float,
    ) -> str:
        account_id = new_account_id()
        await db.execute(
            "INSERT INTO accounts (id, label, source, dialect, refresh_token, config_fingerprint,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (account_id, label, source, dialect, token, config_fp, now, now),
        )
        await self._link(db, token, account_id, now)
        return account_id

    async def _link(self, db: Db, token: str, account_id: str, now: float) -> None:
        # Every token an account ever held points at it, so a client presenting an old or the
        # newest token never spawns a second account for the same Kimi login.
        await db.execute(
            "INSERT OR REPLACE INTO token_fingerprints (fingerprint, account_id, created_at)"
            " VALUES (?, ?, ?)",
            (self.fingerprint(token), account_id, now),
        )

    async def account_for_token(self, token: str, *, now: float) -> Account:
        """The account a client's token belongs to, created on first sight.

        A new account's current refresh token is `token` itself; later the store's (rotated)
        token is used, while `token` keeps mapping to the account by its fingerprint.
        """
        fp = self.fingerprint(token)
        # The common case (a known token) is one read, with no write lock taken.
        rows = await self._read(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id ="
            " (SELECT account_id FROM token_fingerprints WHERE fingerprint = ?)",
            (fp,),
        )
        if rows:
            return account_from_row(rows[0])
        async with self._write() as db:
            row = (
                await db.execute(
                    "SELECT account_id FROM token_fingerprints WHERE fingerprint = ?", (fp,)
                )
            ).fetchone()
            if row is not None:  # another process created it meanwhile
                return await self._get(db, row["account_id"])
            await db.execute(
                f"DELETE FROM accounts WHERE id IN (SELECT id FROM accounts WHERE {_UNPROVEN}"
                " ORDER BY created_at DESC, id LIMIT -1 OFFSET ?)",
                (self.MAX_UNPROVEN - 1,),
            )
            account_id = await self._insert_account(
                db, label=None, source="client", dialect=None, token=token, config_fp=None, now=now
            )
            return await self._get(db, account_id)

    async def get_account(self, account_id: str) -> Account | None:
        """The account's current state, or None when it does not exist."""
        rows = await self._read(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,)
        )
        return account_from_row(rows[0]) if rows else None

    async def get_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        """Several accounts in one query, by id (missing ids are absent)."""
        marks = ",".join("?" * len(account_ids))
        rows = await self._read(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id IN ({marks})", account_ids
        )
        return {row["id"]: account_from_row(row) for row in rows}

    async def upsert_config_account(
        self, label: str, refresh_token: str, *, dialect: str | None = None, now: float
    ) -> Account:
        """Make sure the configured account `label` exists; returns its current state.

        The configured value replaces the current (possibly rotated) token only when the
        configured value itself changed since the last start: the store remembers the
        fingerprint of the configured value, not the value. A changed value also revives a dead
        account (the user logged in again). A value that a client already brought is adopted
        with its account and lifecycle.
        """
        fp = self.fingerprint(refresh_token)
        async with self._write() as db:
            row = (
                await db.execute(
                    "SELECT id, config_fingerprint FROM accounts"
                    " WHERE source = 'config' AND label = ?",
                    (label,),
                )
            ).fetchone()
            if row is None:
                known = (
                    await db.execute(
                        "SELECT account_id FROM token_fingerprints WHERE fingerprint = ?", (fp,)
                    )
                ).fetchone()
                if known is None:
                    account_id = await self._insert_account(
                        db,
                        label=label,
                        source="config",
                        dialect=dialect,
                        token=refresh_token,
                        config_fp=fp,
                        now=now,
                    )
                    return await self._get(db, account_id)
                account_id = known["account_id"]
                await db.execute(
                    "UPDATE accounts SET source = 'config', label = ?, dialect = ?,"
                    " config_fingerprint = ?, updated_at = ? WHERE id = ?",
                    (label, dialect, fp, now, account_id),
                )
                return await self._get(db, account_id)
            account_id = row["id"]
            if row["config_fingerprint"] == fp:
                await db.execute(
                    "UPDATE accounts SET dialect = ? WHERE id = ? AND dialect IS NOT ?",
                    (dialect, account_id, dialect),
                )
            else:
                await db.execute(
                    "UPDATE accounts SET refresh_token = ?, previous_refresh_token = NULL,"
                    " access_token = NULL, access_expires_at = NULL, health = 'ok',"
                    " cooling_until = NULL, last_error = NULL, config_fingerprint = ?,"
                    " dialect = ?, updated_at = ? WHERE id = ?",
                    (refresh_token, fp, dialect, now, account_id),
                )
                await self._link(db, refresh_token, account_id, now)
            return await self._get(db, account_id)

    async def record_rotation(
        self,
        account_id: str,
        *,
        refresh_token: str | None,
        access_token: str,
        access_expires_at: float,
        now: float,
    ) -> Account:
        """Commit a refresh's outcome. Call BEFORE using `access_token`, and before anything
        else that could yield: this commit is what survives a crash.

        `refresh_token` None means the service did not rotate it. The replaced (retired) token
        is kept as `previous_refresh_token` only until `confirm_rotation` says its successor
        worked; it is never sent to Kimi again (Kimi rotated it).
        """
        async with self._write(durable=True) as db:
            current = await self._get(db, account_id)
            if refresh_token is not None and refresh_token != current.refresh_token:
                await db.execute(
                    "UPDATE accounts SET previous_refresh_token = refresh_token,"
                    " refresh_token = ? WHERE id = ?",
                    (refresh_token, account_id),
                )
                await self._link(db, refresh_token, account_id, now)
            await db.execute(
                "UPDATE accounts SET access_token = ?, access_expires_at = ?, updated_at = ?"
                " WHERE id = ?",
                (access_token, access_expires_at, now, account_id),
            )
            return await self._get(db, account_id)

    async def confirm_rotation(self, account_id: str) -> None:
        """The account's current tokens worked once: erase the retired refresh token."""
        async with self._write() as db:
            await db.execute(
                "UPDATE accounts SET previous_refresh_token = NULL"
                " WHERE id = ? AND previous_refresh_token IS NOT NULL",
                (account_id,),
            )

    async def clear_access(self, account_id: str, *, only_if: str | None = None) -> None:
        """Forget the cached access token (only if it is still `only_if`, when given, so a
        token another process just refreshed is not thrown away)."""
        async with self._write() as db:
            if only_if is None:
                await db.execute(
                    "UPDATE accounts SET access_token = NULL WHERE id = ?", (account_id,)
                )
            else:
                await db.execute(
                    "UPDATE accounts SET access_token = NULL WHERE id = ? AND access_token = ?",
                    (account_id, only_if),
                )

    async def set_health(
        self,
        account_id: str,
        health: Health,
        *,
        now: float,
        cooling_until: float | None = None,
        error: str | None = None,
        failure: bool = False,
    ) -> None:
        """Set health; `error` is redacted before it is stored; `failure` counts one failure."""
        async with self._write() as db:
            await db.execute(
                "UPDATE accounts SET health = ?, cooling_until = ?,"
                " last_error = COALESCE(?, last_error), failures = failures + ?, updated_at = ?"
                " WHERE id = ?",
                (
                    health,
                    cooling_until if health == "cooling" else None,
                    None if error is None else redact(error)[:500],
                    1 if failure else 0,
                    now,
                    account_id,
                ),
            )

    async def count_failure(self, account_id: str, *, error: str, now: float) -> None:
        """Count a failure that does not change the account's health."""
        async with self._write() as db:
            await db.execute(
                "UPDATE accounts SET failures = failures + 1, last_error = ?, updated_at = ?"
                " WHERE id = ?",
                (redact(error)[:500], now, account_id),
            )

    async def count_request(self, account_id: str, *, now: float) -> None:
        """Count one request served (or attempted) with the account."""
        async with self._write() as db:
            await db.execute(
                "UPDATE accounts SET requests = requests + 1, updated_at = ? WHERE id = ?",
                (now, account_id),
            )

    async def count_long_text_round(self, account_id: str, *, now: float, window: float) -> int:
        """Count one long-text round in the current window (a new window starts when the old
        one is over); returns the rounds in the window so far."""
        async with self._write() as db:
            await db.execute(
                "UPDATE accounts SET"
                " long_text_rounds = CASE WHEN window_started_at IS NULL"
                "   OR window_started_at + ? <= ? THEN 1 ELSE long_text_rounds + 1 END,"
                " window_started_at = CASE WHEN window_started_at IS NULL"
                "   OR window_started_at + ? <= ? THEN ? ELSE window_started_at END,"
                " updated_at = ? WHERE id = ?",
                (window, now, window, now, now, now, account_id),
            )
            return (await self._get(db, account_id)).view.long_text_rounds

    async def list_accounts(self) -> list[AccountView]:
        """Every account, without tokens, oldest first."""
        rows = await self._read(f"SELECT {VIEW_COLUMNS} FROM accounts ORDER BY created_at, id")
        return [view_from_row(row) for row in rows]

    async def prune_unproven_accounts(self, *, now: float) -> int:
        """Forget client accounts whose token never worked, created over `UNPROVEN_TTL`
        seconds ago (junk tokens, typos); returns how many. A later request with the same
        token starts over with a new account."""
        async with self._write() as db:
            return (
                await db.execute(
                    f"DELETE FROM accounts WHERE {_UNPROVEN} AND created_at < ?",
                    (now - self.UNPROVEN_TTL,),
                )
            ).rowcount

    async def delete_account(self, account_id: str) -> bool:
        """Forget an account with its fingerprints, exchanges and queued deletions."""
        async with self._write() as db:
            return (
                await db.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
            ).rowcount > 0

    # -- gateway keys -----------------------------------------------------------------------

    async def replace_gateway_keys(self, keys: Iterable[tuple[str, str, Sequence[str]]]) -> None:
        """Make the stored keys exactly `(key, label, account_ids)`; only hashes are stored.
        Replacing (not adding) means a key removed from the config stops working. Keys created
        on the admin page (`source = 'admin'`) are left alone."""
        rows = [(hash_key(key), label, json.dumps(list(ids))) for key, label, ids in keys]
        async with self._write() as db:
            await db.execute("DELETE FROM gateway_keys WHERE source = 'config'")
            await db.executemany(
                "INSERT OR REPLACE INTO gateway_keys (key_hash, label, account_ids)"
                " VALUES (?, ?, ?)",
                rows,
            )

    async def add_gateway_key(self, key: str, *, label: str, account_ids: Sequence[str]) -> None:
        """Store one more key (hash only)."""
        async with self._write() as db:
            await db.execute(
                "INSERT OR REPLACE INTO gateway_keys (key_hash, label, account_ids)"
                " VALUES (?, ?, ?)",
                (hash_key(key), label, json.dumps(list(account_ids))),
            )

    async def has_gateway_keys(self) -> bool:
        return bool(await self._read("SELECT 1 FROM gateway_keys LIMIT 1"))

    async def verify_gateway_key(self, key: str) -> GatewayKey | None:
        """The key's grant, or None. Every stored hash is compared in constant time and the
        loop never stops early, so timing tells nothing about which hash came close."""
        presented = hash_key(key)
        found: GatewayKey | None = None
        for row in await self._read("SELECT key_hash, label, account_ids FROM gateway_keys"):
            if constant_time_equal(presented, row["key_hash"]):
                ids = cast(list[str], json.loads(row["account_ids"]))
                found = GatewayKey(label=row["label"], account_ids=tuple(ids))
        return found
