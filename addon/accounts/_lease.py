"""`Lease`: one request's hold on an account of an `AccountPool`, with failover.

Split from `_accounts.py` to keep that module about the token lifecycle; the choice of account
(`AccountPool.choose` / `take` / `release`) stays with the pool's state.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from addon.store._store import Account

if TYPE_CHECKING:
    from ._pool import AccountPool, NoAccountAvailable

__all__ = ["Lease"]


class Lease:
    """One request's hold on an account, with failover.

    ```python
    async with pool.acquire(accounts) as lease:
        while lease.account is not None:
            try:
                ...use lease.account...
                break
            except (AuthFailed, TransientFailure, RemoteProtocolError) as exc:
                if await lease.fail_over(exc) is None:
                    raise lease.refusal or exc
    ```
    Entering raises `NoAccountAvailable` when no account can be had. Leaving without an
    exception marks a cooling account ok again; leaving with one marks nothing (a client that
    hangs up says nothing about the account). The slot is always given back.
    """

    def __init__(self, pool: AccountPool, ids: list[str], *, prefer: str | None = None) -> None:
        self._pool = pool
        self._ids = ids
        self._prefer = prefer
        self._tried: set[str] = set()
        self.account: Account | None = None
        #: why `fail_over` found no next account
        self.refusal: NoAccountAvailable | None = None

    async def _take(self) -> Lease:
        if self.account is None and not self._tried:
            self.account = await self._pool.take(self._ids, self._tried, self._prefer)
            self._tried.add(self.account.id)
        return self

    def __await__(self) -> Generator[Any, None, Lease]:
        """`lease = await pool.acquire(...)` takes the account now (then `async with lease`)."""
        return self._take().__await__()

    async def __aenter__(self) -> Lease:
        return await self._take()

    @property
    def index(self) -> int | None:
        """The current account's position in the list given to `acquire`."""
        return None if self.account is None else self._ids.index(self.account.id)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        account, self.account = self.account, None
        if account is None:
            return
        self._pool.release(account.id)
        if exc_type is None and account.health != "ok":
            await self._pool.mark_ok(account)

    async def fail_over(self, error: BaseException) -> Account | None:
        """Mark the current account per `error`, release it, and take the next candidate.

        AuthFailed or status 401 → dead (only AFTER the one refresh-and-retry: see
        `AccountPool.invalidate_access`); RateLimited or status 402/429 → cooling (its
        `retry_after`, else the cooldown); TransientFailure with `retry_after` → cooling; anything
        else counts a failure only. Returns the next account (already leased) or None, with
        `refusal` saying why.
        """
        account, self.account = self.account, None
        if account is None:
            return None
        await self._pool.mark_for(account, error)
        self._pool.release(account.id)
        choice = await self._pool.try_choose(self._ids, self._tried)
        if not isinstance(choice, Account):
            self.refusal = choice
            return None
        self.account = choice
        self._tried.add(self.account.id)
        return self.account
