"""The store's transaction plumbing and its two queues: automatic multi-turn exchanges and the
conversation cleanup queue. `Store` (in `_store.py`) inherits these; split off only to keep each
module about one thing.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from addon.accounts._secrets import redact

from ._records import Exchange, PendingDeletion

__all__ = ["QueueMethods", "SqliteBase"]


class SqliteBase:
    """One connection, used one statement sequence at a time (a lock, because the relay may
    call from a worker thread too), with short write transactions."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    @contextlib.contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One short write transaction; the write lock is taken up front so it cannot deadlock.

        `durable`: fsync the WAL at commit (synchronous=FULL). Only token rotations need it —
        losing one kills the account — while counters, exchanges and the deletion queue can
        lose their last writes on power loss; an fsync costs ~4 ms of a blocked event loop.
        """
        with self._lock:
            if durable:
                self._db.execute("PRAGMA synchronous = FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous = NORMAL")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()


class QueueMethods(SqliteBase):
    """Exchanges (automatic multi-turn) and pending conversation deletions."""

    # -- exchanges (automatic multi-turn) ---------------------------------------------------

    def save_exchange(
        self,
        key: str,
        *,
        account_id: str,
        conversation_id: str,
        parent_message_id: str,
        dialect: str | None,
        now: float,
    ) -> None:
        """Remember where the conversation identified by `key` continues."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO exchanges (key, account_id, conversation_id,"
                " parent_message_id, dialect, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key, account_id, conversation_id, parent_message_id, dialect, now),
            )

    def find_exchange(self, key: str) -> Exchange | None:
        rows = self._read(
            "SELECT key, account_id, conversation_id, parent_message_id, dialect, updated_at"
            " FROM exchanges WHERE key = ?",
            (key,),
        )
        return Exchange(**dict(rows[0])) if rows else None

    def find_exchanges(self, keys: Sequence[str]) -> dict[str, Exchange]:
        """The remembered exchanges among `keys`, by key: one query per 500 keys instead of one
        per key (a 10,000-message history has 5,000 candidate prefixes)."""
        found: dict[str, Exchange] = {}
        for start in range(0, len(keys), 500):
            part = list(keys[start : start + 500])
            marks = ",".join("?" * len(part))
            rows = self._read(
                "SELECT key, account_id, conversation_id, parent_message_id, dialect, updated_at"
                f" FROM exchanges WHERE key IN ({marks})",
                part,
            )
            for row in rows:
                found[row["key"]] = Exchange(**dict(row))
        return found

    def latest_exchange_for(self, conversation_id: str) -> Exchange | None:
        """The newest exchange of a conversation (a Connect continuation needs its parent id)."""
        rows = self._read(
            "SELECT key, account_id, conversation_id, parent_message_id, dialect, updated_at"
            " FROM exchanges WHERE conversation_id = ? ORDER BY updated_at DESC LIMIT 1",
            (conversation_id,),
        )
        return Exchange(**dict(rows[0])) if rows else None

    def prune_exchanges(self, *, older_than: float) -> int:
        """Drop exchanges last used before `older_than`; returns how many."""
        with self._write() as db:
            return db.execute("DELETE FROM exchanges WHERE updated_at < ?", (older_than,)).rowcount

    # -- pending conversation deletions -----------------------------------------------------

    def schedule_deletion(
        self, account_id: str, conversation_id: str, *, dialect: str | None, due_at: float
    ) -> None:
        """Queue a conversation for deletion at `due_at` (re-scheduling resets attempts)."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO pending_deletions (conversation_id, account_id, dialect,"
                " due_at, attempts, last_error) VALUES (?, ?, ?, ?, 0, NULL)",
                (conversation_id, account_id, dialect, due_at),
            )

    def due_deletions(self, now: float, *, limit: int = 50) -> list[PendingDeletion]:
        """Queued deletions whose time has come, earliest first."""
        rows = self._read(
            "SELECT account_id, conversation_id, dialect, due_at, attempts, last_error"
            " FROM pending_deletions WHERE due_at <= ? ORDER BY due_at LIMIT ?",
            (now, limit),
        )
        return [PendingDeletion(**dict(row)) for row in rows]

    def claim_due_deletions(
        self,
        now: float,
        *,
        owner: str,
        claim_ttl: float,
        due_by: float | None = None,
        limit: int = 50,
    ) -> list[PendingDeletion]:
        """Claim up to `limit` due deletions for `owner` until `now + claim_ttl`, earliest
        first, and return them. A row claimed by someone else is skipped until its claim runs
        out (its holder crashed), so overlapping passes and processes never delete one
        conversation twice. `owner`'s own claims are taken again (a pass cut short by shutdown).
        `due_by`: the horizon (default `now`; shutdown passes infinity)."""
        with self._write() as db:
            rows = db.execute(
                "UPDATE pending_deletions SET claimed_by = ?, claimed_until = ?"
                " WHERE conversation_id IN (SELECT conversation_id FROM pending_deletions"
                "  WHERE due_at <= ?"
                "  AND (claimed_until IS NULL OR claimed_until <= ? OR claimed_by = ?)"
                "  ORDER BY due_at LIMIT ?)"
                " RETURNING account_id, conversation_id, dialect, due_at, attempts, last_error",
                (owner, now + claim_ttl, now if due_by is None else due_by, now, owner, limit),
            ).fetchall()
        found = [PendingDeletion(**dict(row)) for row in rows]
        return sorted(found, key=lambda p: (p.due_at, p.conversation_id))

    def mark_deleted(self, conversation_id: str) -> None:
        """The conversation is gone (or given up on): drop it from the queue."""
        with self._write() as db:
            db.execute(
                "DELETE FROM pending_deletions WHERE conversation_id = ?", (conversation_id,)
            )

    def reschedule(self, conversation_id: str, *, now: float, backoff: float, error: str) -> None:
        """A deletion failed: try again `backoff` seconds from now (the caller grows it from
        `PendingDeletion.attempts`) and count the attempt."""
        with self._write() as db:
            db.execute(
                "UPDATE pending_deletions SET due_at = ?, attempts = attempts + 1,"
                " last_error = ?, claimed_by = NULL, claimed_until = NULL"
                " WHERE conversation_id = ?",
                (now + backoff, redact(error)[:500], conversation_id),
            )

    def pending_deletion_count(self) -> int:
        """How many conversations are queued for deletion (for `/metrics`)."""
        return int(self._read("SELECT COUNT(*) FROM pending_deletions")[0][0])

    def is_pending(self, conversation_id: str) -> bool:
        """True while the conversation is ours and not yet deleted (it is queued)."""
        rows = self._read(
            "SELECT 1 FROM pending_deletions WHERE conversation_id = ?", (conversation_id,)
        )
        return bool(rows)

    def cancel_deletion(self, conversation_id: str) -> bool:
        """The client continues the conversation: keep it. True when one was queued."""
        with self._write() as db:
            return (
                db.execute(
                    "DELETE FROM pending_deletions WHERE conversation_id = ?", (conversation_id,)
                ).rowcount
                > 0
            )
