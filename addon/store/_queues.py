"""The store's two queues: automatic multi-turn exchanges and the conversation cleanup queue.
`Store` (in `_store.py`) inherits these; split off only to keep each module about one thing.
"""

from __future__ import annotations

from collections.abc import Sequence

from addon.accounts._secrets import redact

from ._base import StoreBase
from ._records import Exchange, PendingDeletion

__all__ = ["QueueMethods"]


class QueueMethods(StoreBase):
    """Exchanges (automatic multi-turn) and pending conversation deletions."""

    # -- exchanges (automatic multi-turn) ---------------------------------------------------

    async def save_exchange(
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
        async with self._write() as db:
            await db.execute(
                "INSERT OR REPLACE INTO exchanges (key, account_id, conversation_id,"
                " parent_message_id, dialect, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key, account_id, conversation_id, parent_message_id, dialect, now),
            )

    async def find_exchange(self, key: str) -> Exchange | None:
        rows = await self._read(
            "SELECT key, account_id, conversation_id, parent_message_id, dialect, updated_at"
            " FROM exchanges WHERE key = ?",
            (key,),
        )
        return Exchange(**dict(rows[0])) if rows else None

    async def find_exchanges(self, keys: Sequence[str]) -> dict[str, Exchange]:
        """The remembered exchanges among `keys`, by key: one query per 500 keys instead of one
        per key (a 10,000-message history has 5,000 candidate prefixes)."""
        found: dict[str, Exchange] = {}
        for start in range(0, len(keys), 500):
            part = list(keys[start : start + 500])
            marks = ",".join("?" * len(part))
            rows = await self._read(
                "SELECT key, account_id, conversation_id, parent_message_id, dialect, updated_at"
                f" FROM exchanges WHERE key IN ({marks})",
                part,
            )
            for row in rows:
                found[row["key"]] = Exchange(**dict(row))
        return found

    async def latest_exchange_for(self, conversation_id: str) -> Exchange | None:
        """The newest exchange of a conversation (a Connect continuation needs its parent id)."""
        rows = await self._read(
            "SELECT key, account_id, conversation_id, parent_message_id, dialect, updated_at"
            " FROM exchanges WHERE conversation_id = ? ORDER BY updated_at DESC LIMIT 1",
            (conversation_id,),
        )
        return Exchange(**dict(rows[0])) if rows else None

    async def prune_exchanges(self, *, older_than: float) -> int:
        """Drop exchanges last used before `older_than`; returns how many."""
        async with self._write() as db:
            return (
                await db.execute("DELETE FROM exchanges WHERE updated_at < ?", (older_than,))
            ).rowcount

    # -- pending conversation deletions -----------------------------------------------------

    async def schedule_deletion(
        self, account_id: str, conversation_id: str, *, dialect: str | None, due_at: float
    ) -> None:
        """Queue a conversation for deletion at `due_at` (re-scheduling resets attempts)."""
        async with self._write() as db:
            await db.execute(
                "INSERT OR REPLACE INTO pending_deletions (conversation_id, account_id, dialect,"
                " due_at, attempts, last_error) VALUES (?, ?, ?, ?, 0, NULL)",
                (conversation_id, account_id, dialect, due_at),
            )

    async def schedule_claimed_deletion(
        self,
        account_id: str,
        conversation_id: str,
        *,
        dialect: str | None,
        now: float,
        owner: str,
        claim_ttl: float,
    ) -> None:
        """Queue a conversation as due now and claimed by `owner` until `now + claim_ttl`, in
        one write: the caller deletes it itself at once, and no cleanup pass (of this process
        or another sharing the store) takes it meanwhile. If the caller dies first, the claim
        runs out and the next pass deletes it."""
        async with self._write() as db:
            await db.execute(
                "INSERT OR REPLACE INTO pending_deletions (conversation_id, account_id, dialect,"
                " due_at, attempts, last_error, claimed_by, claimed_until)"
                " VALUES (?, ?, ?, ?, 0, NULL, ?, ?)",
                (conversation_id, account_id, dialect, now, owner, now + claim_ttl),
            )

    async def due_deletions(self, now: float, *, limit: int = 50) -> list[PendingDeletion]:
        """Queued deletions whose time has come, earliest first."""
        rows = await self._read(
            "SELECT account_id, conversation_id, dialect, due_at, attempts, last_error"
            " FROM pending_deletions WHERE due_at <= ? ORDER BY due_at LIMIT ?",
            (now, limit),
        )
        return [PendingDeletion(**dict(row)) for row in rows]

    async def claim_due_deletions(
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
        async with self._write() as db:
            rows = (
                await db.execute(
                    "UPDATE pending_deletions SET claimed_by = ?, claimed_until = ?"
                    " WHERE conversation_id IN (SELECT conversation_id FROM pending_deletions"
                    "  WHERE due_at <= ?"
                    "  AND (claimed_until IS NULL OR claimed_until <= ? OR claimed_by = ?)"
                    "  ORDER BY due_at LIMIT ?)"
                    " RETURNING account_id, conversation_id, dialect, due_at, attempts, last_error",
                    (owner, now + claim_ttl, now if due_by is None else due_by, now, owner, limit),
                )
            ).fetchall()
        found = [PendingDeletion(**dict(row)) for row in rows]
        return sorted(found, key=lambda p: (p.due_at, p.conversation_id))

    async def mark_deleted(self, conversation_id: str) -> None:
        """The conversation is gone (or given up on): drop it from the queue."""
        async with self._write() as db:
            await db.execute(
                "DELETE FROM pending_deletions WHERE conversation_id = ?", (conversation_id,)
            )

    async def reschedule(
        self, conversation_id: str, *, now: float, backoff: float, error: str
    ) -> None:
        """A deletion failed: try again `backoff` seconds from now (the caller grows it from
        `PendingDeletion.attempts`) and count the attempt."""
        async with self._write() as db:
            await db.execute(
                "UPDATE pending_deletions SET due_at = ?, attempts = attempts + 1,"
                " last_error = ?, claimed_by = NULL, claimed_until = NULL"
                " WHERE conversation_id = ?",
                (now + backoff, redact(error)[:500], conversation_id),
            )

    async def pending_deletion_count(self) -> int:
        """How many conversations are queued for deletion (for `/metrics`)."""
        return int((await self._read("SELECT COUNT(*) FROM pending_deletions"))[0][0])

    async def is_pending(self, conversation_id: str) -> bool:
        """True while the conversation is ours and not yet deleted (it is queued)."""
        rows = await self._read(
            "SELECT 1 FROM pending_deletions WHERE conversation_id = ?", (conversation_id,)
        )
        return bool(rows)

    async def cancel_deletion(self, conversation_id: str) -> bool:
        """The client continues the conversation: keep it. True when one was queued."""
        async with self._write() as db:
            return (
                await db.execute(
                    "DELETE FROM pending_deletions WHERE conversation_id = ?", (conversation_id,)
                )
            ).rowcount > 0
