"""The store's refresh lock: at most one refresh per account at a time, across every process
that shares the store.

Why: Kimi's refresh token rotates on every use and has a single holder. Two processes that
refresh the same account at once both send the same token; Kimi answers one and refuses the
other, and the refused one may never learn the new token. So a refresh happens only under this
lock, and the holder re-reads the store first (another holder may have refreshed meanwhile).

The lock is a row `(account_id, owner, expires_at)` written in a write transaction:
free when there is no row, when the row is expired (its holder crashed), or when it is the
caller's own. The holder renews it while its refresh runs, so a slow refresh keeps it and a
crashed holder's lock frees itself within `ttl` seconds. Any other store (the PostgreSQL one)
gives the same guarantee behind the same three calls: `try_refresh_lock`,
`release_refresh_lock` and the `refresh_lock` context manager built on them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ._base import StoreBase

__all__ = ["LockMethods"]


class LockMethods(StoreBase):
    """Refresh locks, per account, shared by every process on the store."""

    async def try_refresh_lock(
        self, account_id: str, *, owner: str, ttl: float, now: float
    ) -> bool:
        """Take (or renew, for `owner`) the account's refresh lock until `now + ttl`.
        False when another owner holds an unexpired lock."""
        async with self._write() as db:
            row = (
                await db.execute(
                    "SELECT owner, expires_at FROM refresh_locks WHERE account_id = ?",
                    (account_id,),
                )
            ).fetchone()
            if row is not None and row["owner"] != owner and row["expires_at"] > now:
                return False
            await db.execute(
                "INSERT OR REPLACE INTO refresh_locks (account_id, owner, expires_at)"
                " VALUES (?, ?, ?)",
                (account_id, owner, now + ttl),
            )
            return True

    async def release_refresh_lock(self, account_id: str, *, owner: str) -> None:
        """Give the lock back (only `owner`'s own: an expired lock may have a new holder)."""
        async with self._write() as db:
            await db.execute(
                "DELETE FROM refresh_locks WHERE account_id = ? AND owner = ?", (account_id, owner)
            )

    @contextlib.asynccontextmanager
    async def refresh_lock(
        self,
        account_id: str,
        *,
        owner: str,
        ttl: float,
        clock: Callable[[], float],
        poll: float = 0.05,
    ) -> AsyncIterator[None]:
        """`async with store.refresh_lock(account_id, owner=..., ttl=..., clock=time.time):` —
        wait (polling every `poll` seconds) until the account's refresh lock is ours, keep it
        renewed while the body runs, and release it on the way out. `clock` is wall time:
        every process sharing the store compares expiries with it."""
        while not await self.try_refresh_lock(account_id, owner=owner, ttl=ttl, now=clock()):
            await asyncio.sleep(poll)

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                await self.try_refresh_lock(account_id, owner=owner, ttl=ttl, now=clock())

        renewer = asyncio.get_running_loop().create_task(renew())
        try:
            yield
        finally:
            renewer.cancel()

            async def release() -> None:
                await asyncio.wait([renewer])  # a renewal in flight ends before the release
                await self.release_refresh_lock(account_id, owner=owner)

            # shielded: a holder cancelled here still frees the lock for the others at once
            await asyncio.shield(release())
