"""Small named values the proxy remembers across restarts, in the store's `meta` table (the
same table that holds the salt): e.g. which DeleteChat route works at a base URL."""

from __future__ import annotations

from ._base import StoreBase

__all__ = ["MetaMethods"]

#: keys of ours start with this, so they never meet the store's own (`salt`)
_PREFIX = "note:"


class MetaMethods(StoreBase):
    async def note(self, key: str) -> str | None:
        """The value remembered under `key`, or None."""
        rows = await self._read("SELECT value FROM meta WHERE key = ?", (_PREFIX + key,))
        return str(rows[0]["value"]) if rows else None

    async def set_note(self, key: str, value: str) -> None:
        """Remember `value` under `key` (replacing what was there)."""
        async with self._write() as db:
            await db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_PREFIX + key, value)
            )
