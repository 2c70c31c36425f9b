"""The store's part for the admin page: accounts it added or disabled, keys it created.

`Store` (in `_store.py`) inherits these. Admin-created gateway keys carry `source = 'admin'`, so
a config reload (which makes the config's keys exact) leaves them alone; like every key, only
their hash is stored, and the key itself is shown once, when it is created.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from addon.accounts._secrets import hash_key

from ._base import StoreBase

__all__ = ["KEY_ID_LENGTH", "AdminMethods"]

#: a gateway key's public id: the first hex digits of its hash (the key cannot be derived)
KEY_ID_LENGTH = 12


class AdminMethods(StoreBase):
    """Admin-page changes to accounts and gateway keys."""

    async def configured_label_owner(self, label: str) -> tuple[str, bool] | None:
        """(id, added_by_admin) of the server-side account named `label`, if there is one."""
        rows = await self._read(
            "SELECT id, added_by_admin FROM accounts WHERE source = 'config' AND label = ?",
            (label,),
        )
        return (rows[0]["id"], bool(rows[0]["added_by_admin"])) if rows else None

    async def mark_added_by_admin(self, account_id: str) -> None:
        async with self._write() as db:
            await db.execute("UPDATE accounts SET added_by_admin = 1 WHERE id = ?", (account_id,))

    async def admin_account_ids(self) -> list[str]:
        """Accounts added on the admin page, oldest first."""
        rows = await self._read(
            "SELECT id FROM accounts WHERE added_by_admin = 1 ORDER BY created_at, id"
        )
        return [row["id"] for row in rows]

    async def server_account_ids(self) -> list[str]:
        """Server-side accounts (configured or added by the admin), oldest first."""
        rows = await self._read(
            "SELECT id FROM accounts WHERE source = 'config' ORDER BY created_at, id"
        )
        return [row["id"] for row in rows]

    async def set_disabled(self, account_id: str, disabled: bool, *, now: float) -> bool:
        """Turn an account off (no request uses it) or on again; False when it is unknown."""
        async with self._write() as db:
            cursor = await db.execute(
                "UPDATE accounts SET disabled = ?, updated_at = ? WHERE id = ?",
                (1 if disabled else 0, now, account_id),
            )
            return cursor.rowcount > 0

    async def make_deletions_due(self, account_id: str, *, now: float) -> int:
        """Make every conversation of the account waiting for deletion due now (before the
        account is removed: its rows would go with it, and the conversations stay on Kimi)."""
        async with self._write() as db:
            cursor = await db.execute(
                "UPDATE pending_deletions SET due_at = ? WHERE account_id = ? AND due_at > ?",
                (now, account_id, now),
            )
            return int(cursor.rowcount)

    async def create_gateway_key(
        self, key: str, *, label: str, account_ids: Sequence[str], now: float
    ) -> str:
        """Store an admin-created key (its hash only); returns its public id."""
        digest = hash_key(key)
        async with self._write() as db:
            await db.execute(
                "INSERT INTO gateway_keys (key_hash, label, account_ids, source, created_at)"
                " VALUES (?, ?, ?, 'admin', ?)",
                (digest, label, json.dumps(list(account_ids)), now),
            )
        return digest[:KEY_ID_LENGTH]

    async def list_gateway_keys(self) -> list[dict[str, Any]]:
        """Every key as its id, label, source, account ids and creation time (no hash)."""
        rows = await self._read(
            "SELECT key_hash, label, account_ids, source, created_at FROM gateway_keys"
            " ORDER BY source, created_at, label"
        )
        return [
            {
                "id": row["key_hash"][:KEY_ID_LENGTH],
                "label": row["label"],
                "source": row["source"],
                "accounts": json.loads(row["account_ids"]),
                "created_at": row["created_at"],
            }
            for row in rows
        ]

    async def revoke_gateway_key(self, key_id: str) -> Literal["revoked", "config", "missing"]:
        """Delete the admin-created key with this id. A configured key is not deleted (the
        next reload would bring it back): "config" says to remove it from the file."""
        if len(key_id) != KEY_ID_LENGTH:
            return "missing"
        async with self._write() as db:
            rows = (
                await db.execute(
                    "SELECT key_hash, source FROM gateway_keys WHERE substr(key_hash, 1, ?) = ?",
                    (KEY_ID_LENGTH, key_id),
                )
            ).fetchall()
            if not rows:
                return "missing"
            if any(row["source"] != "admin" for row in rows):
                return "config"
            await db.execute(
                "DELETE FROM gateway_keys WHERE substr(key_hash, 1, ?) = ? AND source = 'admin'",
                (KEY_ID_LENGTH, key_id),
            )
            return "revoked"
