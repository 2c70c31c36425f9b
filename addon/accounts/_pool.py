"""The token lifecycle and the choice of account for each request.

Theory of operation
-------------------
`resolve(credentials)` turns a client's bearer value into accounts: comma-joined Kimi refresh
tokens (each mapped to its store account by fingerprint, created on first sight), or a gateway
key (`sk-...`) naming configured accounts. `acquire(accounts)` leases the least-busy usable one;
`access_token(account)` gives a valid access token, refreshing when the cached one expires
within `refresh_margin`.

A refresh ROTATES the refresh token (single holder), so:
- one refresh per account at a time in this process (single flight): concurrent callers await
  the same task;
- and one at a time across processes sharing the store: the task holds the account's refresh
  lock in the store (`Store.refresh_lock`) and re-reads the account once it has it, so a
  refresh another process just made is used instead of repeated;
- the task runs detached from its callers (`asyncio.shield`), so a client hanging up mid-refresh
  cannot cancel it between Kimi rotating the token and the store recording the rotation;
- the rotation is committed to the store as the first thing after Kimi's answer (nothing is
  awaited in between) and BEFORE the access token is returned;
- each refresh token is sent to Kimi once: a refused token that the store meanwhile replaced
  (a process that did not wait for the lock) means "re-read and use the new one", not "dead";
  a rotated-out token is never sent again.

Health: `ok`; `cooling` until `cooling_until` (Retry-After, else `cooldown`) after a rate limit;
`dead` when Kimi refuses the account's current refresh token. A dead account is skipped, never
refreshed again, and stays dead until
its token changes: a configured account revives when its configured value changes
(`Store.upsert_config_account`); a client logs in again and sends the new token, which becomes a
new account (the dead row stays for `/v1/accounts` until deleted). A client token that never
worked (never refreshed successfully) is forgotten after `Store.UNPROVEN_TTL` seconds, and the
store keeps at most `Store.MAX_UNPROVEN` of them, so junk tokens cannot grow the store.

Busy: each account serves at most `max_concurrency` requests of this process at once. When every
usable account is at the cap, `acquire` waits up to `busy_wait` seconds (2 s by default) for a
slot and then fails fast with 429 "all accounts busy": a short wait absorbs bursts, a long queue
would only hide overload from clients that can retry themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from addon.process._config import Config
from addon.store._store import Account, Store
from translator import RemoteProtocolError, TranslatorError
from translator.connect._jwt import decode_jwt_claims

from ._lease import Lease
from ._secrets import constant_time_equal, hash_key

__all__ = [
    "AccessDenied",
    "Account",
    "AccountPool",
    "AuthFailed",
    "Lease",
    "NoAccountAvailable",
    "RateLimited",
    "TokenGrant",
    "TransientFailure",
]

#: the most Kimi tokens and keys one `Authorization` header may name (each one may cost a
#: refresh at Kimi and a row in the store)
MAX_TOKENS_PER_HEADER = 32

#: Kimi's long-text quota window (about 30 rounds per 3 hours for ordinary accounts)
LONG_TEXT_WINDOW = 3 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenGrant:
    """What one refresh call returned. `refresh_token` None: not rotated; `expires_at` None:
    unknown (the JWT `exp` claim or the default TTL is used)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False, default=None)
    expires_at: float | None = None


class AuthFailed(Exception):
    """Kimi rejected the refresh token (HTTP 401 / `auth.token.invalid`): it is dead."""


class TransientFailure(Exception):
    """A network error or 5xx; says nothing about the token. `retry_after` in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientFailure):
    """Kimi throttled this account (429, `resource_exhausted`, quota): cool it down."""


def _printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


class AccessDenied(TranslatorError):
    """The client's credentials are missing, invalid, or not allowed here (401 / 403)."""

    default_status = 401
    default_type = "invalid_request_error"


class NoAccountAvailable(TranslatorError):
    """No account can take the request: all dead (401), cooling or busy (429)."""

    default_status = 429
    default_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,  # the OpenAI field name, as in TranslatorError
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, type=type, code=code)
        #: seconds, for a Retry-After header
        self.retry_after = retry_after


RefreshFn = Callable[[str], Awaitable[TokenGrant]]


class AccountPool:
    """Resolves client credentials to accounts, leases them, and keeps their tokens alive."""

    def __init__(
        self,
        store: Store,
        *,
        refresh: RefreshFn,
        clock: Callable[[], float],
        max_concurrency: int = 5,
        cooldown: float = 60.0,
        refresh_margin: float = 30.0,
        default_access_ttl: float = 300.0,
        busy_wait: float = 2.0,
        require_key: bool = False,
        admin_key: str | None = None,
        refresh_lock_ttl: float = 30.0,
    ) -> None:
        self.store = store
        self._refresh_fn = refresh
        self._clock = clock
        self.max_concurrency = max_concurrency
        self.cooldown = cooldown
        self.refresh_margin = refresh_margin
        self.default_access_ttl = default_access_ttl
        self.busy_wait = busy_wait
        self.require_key = require_key
        self._admin_hash = None if admin_key is None else hash_key(admin_key)
        self._in_flight: dict[str, int] = {}
        self._refreshing: dict[str, asyncio.Task[str]] = {}
        #: who holds a refresh lock taken by this pool (unique per process and pool)
        self.lock_owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        #: seconds a refresh lock lasts without renewal (a crashed holder's frees itself)
        self.refresh_lock_ttl = refresh_lock_ttl
        #: accounts rotated here whose retired token waits for the new one to work once
        self._unconfirmed: set[str] = set()
        self._freed: asyncio.Event | None = None

    # -- configuration and credentials ------------------------------------------------------

    async def apply_config(self, config: Config) -> dict[str, Account]:
        """Sync the store with the config (accounts by label, the exact set of gateway keys) and
        adopt `require_key` / `admin_key`. Returns the configured accounts by label."""
        now = self._clock()
        by_label = {
            a.label: await self.store.upsert_config_account(
                a.label, a.refresh_token, dialect=a.dialect, now=now
            )
            for a in config.accounts
        }
        # A key without an account list may use every configured account and every account
        # added on the admin page.
        everyone = [a.id for a in by_label.values()]
        everyone += [i for i in await self.store.admin_account_ids() if i not in everyone]
        await self.store.replace_gateway_keys(
            (k.key, k.label, [by_label[x].id for x in k.accounts] if k.accounts else everyone)
            for k in config.keys
        )
        self.require_key = config.refuses_raw_tokens
        self._admin_hash = None if config.admin_key is None else hash_key(config.admin_key)
        return by_label

    @property
    def admin_hash(self) -> str | None:
        """The hash of the configured admin key (None: no admin key, the admin API is off)."""
        return self._admin_hash

    def is_admin(self, credentials: str) -> bool:
        """True when `credentials` (a bearer value) is the configured admin key."""
        value = _strip_bearer(credentials)
        return self._admin_hash is not None and constant_time_equal(
            hash_key(value), self._admin_hash
        )

    async def resolve(self, credentials: str) -> list[Account]:
        """The accounts a client's bearer value names, in order, without duplicates.

        Raises:
            AccessDenied: nothing given (401 "missing token"), an unknown `sk-` key (401), a raw
                Kimi token while keys are required (401), a key without accounts (403), or
                more than `MAX_TOKENS_PER_HEADER` tokens (400 "too_many_tokens").
        """
        parts = [p.strip() for p in _strip_bearer(credentials).split(",")]
        parts = list(dict.fromkeys(p for p in parts if p))
        if not parts:
            raise AccessDenied(
                "missing token: send 'Authorization: Bearer <Kimi refresh token or API key>'",
                code="missing_token",
            )
        if len(parts) > MAX_TOKENS_PER_HEADER:
            raise AccessDenied(
                f"too many tokens in the Authorization header: {len(parts)}; at most "
                f"{MAX_TOKENS_PER_HEADER} comma-separated tokens or keys are accepted",
                status=400,
                code="too_many_tokens",
            )
        if not all(_printable_ascii(part) for part in parts):
            # No Kimi token or API key has other characters, and they cannot go in a header.
            raise AccessDenied(
                "invalid API key: tokens and keys are printable ASCII", code="invalid_api_key"
            )
        now = self._clock()
        found: dict[str, Account] = {}
        for part in parts:
            if part.startswith("sk-"):
                grant = await self.store.verify_gateway_key(part)
                if grant is None:
                    raise AccessDenied("invalid API key", code="invalid_api_key")
                found.update(await self.store.get_accounts(grant.account_ids))
            elif self.require_key:
                raise AccessDenied(
                    "this proxy requires an API key (sk-...); Kimi tokens are not accepted",
                    code="invalid_api_key",
                )
            else:
                account = await self.store.account_for_token(part, now=now)
                found[account.id] = account
        if not found:
            raise AccessDenied("this API key has no Kimi accounts", status=403, code="no_accounts")
        return list(found.values())

    # -- access tokens ----------------------------------------------------------------------

    def _fresh(self, account: Account, now: float) -> bool:
        expires = account.access_expires_at
        return (
            account.access_token is not None
            and expires is not None
            and expires - self.refresh_margin > now
        )

    async def access_token(self, account: Account) -> str:
        """A valid access token for `account`, refreshing (once, shared) when needed.

        Raises:
            AuthFailed: the account is dead, or Kimi rejected its refresh token now.
            TransientFailure: the refresh call failed for a reason unrelated to the token.
        """
        current = await self.store.get_account(account.id)
        if current is None:
            raise KeyError(account.id)
        if current.health == "dead":
            raise AuthFailed("the account's refresh token was rejected by Kimi earlier")
        if self._fresh(current, self._clock()):
            assert current.access_token is not None
            return current.access_token
        task = self._refreshing.get(account.id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(account.id))
            self._refreshing[account.id] = task
            task.add_done_callback(self._refresh_done(account.id))
        return await asyncio.shield(task)

    def _refresh_done(self, account_id: str) -> Callable[[asyncio.Task[str]], None]:
        def done(task: asyncio.Task[str]) -> None:
            if self._refreshing.get(account_id) is task:
                del self._refreshing[account_id]
            if not task.cancelled():
                task.exception()  # retrieved here, so an unawaited failure is not "lost"

        return done

    async def _refresh(self, account_id: str) -> str:
        async with self.store.refresh_lock(
            account_id, owner=self.lock_owner, ttl=self.refresh_lock_ttl, clock=self._clock
        ):
            return await self._refresh_locked(account_id)

    async def _refresh_locked(self, account_id: str) -> str:
        sent: set[str] = set()
        while True:
            account = await self.store.get_account(account_id)
            if account is None:
                raise KeyError(account_id)
            if account.health == "dead":  # another process found it dead meanwhile
                raise AuthFailed("the account's refresh token was rejected by Kimi earlier")
            if self._fresh(account, self._clock()):  # another process refreshed meanwhile
                assert account.access_token is not None
                return account.access_token
            token = account.refresh_token
            if token in sent:
                break  # cannot happen while the store only moves forward; never send twice
            sent.add(token)
            try:
                grant = await self._refresh_fn(token)
            except AuthFailed:
                # Refused: dead, unless the store holds a newer token by now (a process that
                # refreshed without the lock); then that one is the account's token.
                latest = await self.store.get_account(account_id)
                if latest is not None and latest.refresh_token != token:
                    continue
                break
            # The first thing after Kimi's answer: Kimi has rotated the token, and only this
            # commit keeps the new one across a crash. (SQLite commits it before the loop runs
            # anything else; the PostgreSQL store shields it from cancellation.)
            now = self._clock()
            await self.store.record_rotation(
                account_id,
                refresh_token=grant.refresh_token,
                access_token=grant.access_token,
                access_expires_at=self._expiry(grant, now),
                now=now,
            )
            if grant.refresh_token is not None and grant.refresh_token != token:
                self._unconfirmed.add(account_id)
            return grant.access_token
        error = "Kimi rejected the refresh token: log in again and send the new token"
        await self.store.set_health(
            account_id, "dead", now=self._clock(), error=error, failure=True
        )
        raise AuthFailed(error)

    async def confirm(self, account: Account) -> None:
        """A request on `account` succeeded: a refresh token this pool retired can go now
        (its successor has worked)."""
        if account.id in self._unconfirmed:
            self._unconfirmed.discard(account.id)
            await self.store.confirm_rotation(account.id)

    def _expiry(self, grant: TokenGrant, now: float) -> float:
        if grant.expires_at is not None:
            return grant.expires_at
        try:
            exp = decode_jwt_claims(grant.access_token).exp
        except RemoteProtocolError:  # not a JWT: the legacy service's opaque tokens
            exp = None
        return float(exp) if exp is not None else now + self.default_access_ttl

    async def invalidate_access(self, account: Account, access_token: str | None = None) -> None:
        """Drop the cached access token after Kimi refused it mid-flight; the next
        `access_token` call refreshes. Give the refused token so a newer one is kept."""
        await self.store.clear_access(account.id, only_if=access_token)

    # -- health and counters ----------------------------------------------------------------

    async def mark_dead(self, account: Account, error: str | BaseException) -> None:
        await self.store.set_health(
            account.id, "dead", now=self._clock(), error=str(error), failure=True
        )

    async def mark_cooling(
        self, account: Account, seconds: float | None, error: str | BaseException
    ) -> None:
        """Rest the account for `seconds` (Retry-After), else for `cooldown`."""
        now = self._clock()
        until = now + (self.cooldown if seconds is None else max(0.0, seconds))
        await self.store.set_health(
            account.id, "cooling", now=now, cooling_until=until, error=str(error), failure=True
        )

    async def mark_ok(self, account: Account) -> None:
        await self.store.set_health(account.id, "ok", now=self._clock())

    async def note_long_text_round(self, account: Account) -> int:
        """Count a long-text question against Kimi's per-window quota; returns the count."""
        return await self.store.count_long_text_round(
            account.id, now=self._clock(), window=LONG_TEXT_WINDOW
        )

    async def mark_for(self, account: Account, error: BaseException) -> None:
        """Record what `error` says about the account (see `Lease.fail_over`)."""
        status = error.status if isinstance(error, TranslatorError) else None
        if isinstance(error, AuthFailed) or status == 401:
            await self.mark_dead(account, error)
        elif isinstance(error, RateLimited) or status in (402, 429):
            await self.mark_cooling(account, getattr(error, "retry_after", None), error)
        elif isinstance(error, TransientFailure) and error.retry_after is not None:
            await self.mark_cooling(account, error.retry_after, error)
        else:
            await self.store.count_failure(account.id, error=str(error), now=self._clock())

    # -- leasing ----------------------------------------------------------------------------

    def acquire(self, accounts: Sequence[Account], *, prefer: str | None = None) -> Lease:
        """`async with pool.acquire(accounts) as lease:` — see `Lease`. `prefer`: the id of an
        account to take whenever it is usable (it holds the conversation being continued)."""
        return Lease(self, [a.id for a in accounts], prefer=prefer)

    async def describe(self) -> list[dict[str, Any]]:
        """Every account without tokens, as JSON objects (for `/v1/accounts`), with the
        requests this process has in flight on each."""
        return [
            {**view.to_json(), "in_flight": self.in_flight(view.id)}
            for view in await self.store.list_accounts()
        ]

    def in_flight(self, account_id: str) -> int:
        return self._in_flight.get(account_id, 0)

    def total_in_flight(self) -> int:
        """Requests this process serves with some account right now (open upstream replies)."""
        return sum(self._in_flight.values())

    async def health_counts(self) -> dict[str, int]:
        """Accounts by effective health (a cooling account whose rest is over counts as ok; a
        disabled one as `disabled`)."""
        now = self._clock()
        counts: dict[str, int] = {}
        for view in await self.store.list_accounts():
            health: str = view.health
            if view.disabled:
                health = "disabled"
            elif health == "cooling" and (view.cooling_until or 0.0) <= now:
                health = "ok"
            counts[health] = counts.get(health, 0) + 1
        return counts

    async def usable_count(self, *, source: str = "config") -> int:
        """Accounts of `source` that a request could use now (not dead, cooling or disabled)."""
        now = self._clock()
        return sum(
            1
            for view in await self.store.list_accounts()
            if view.source == source
            and not view.disabled
            and view.health != "dead"
            and (view.cooling_until or 0.0) <= now
        )

    async def choose(
        self, ids: Sequence[str], exclude: set[str], prefer: str | None = None
    ) -> Account:
        """Take a slot on the best usable account now, or raise why none is usable.

        Best: the preferred account if usable, then fewest requests in flight here, then fewest
        requests served, then client order.
        """
        now = self._clock()
        current = await self.store.get_accounts(ids)
        candidates = [current[i] for i in ids if i in current and i not in exclude]
        if candidates and all(a.view.disabled for a in candidates):
            raise NoAccountAvailable(
                "every account this key may use is disabled by the admin",
                status=503,
                code="accounts_disabled",
            )
        candidates = [a for a in candidates if not a.view.disabled]
        if not candidates:
            raise NoAccountAvailable(
                "every account was tried and failed", status=503, code="accounts_exhausted"
            )
        alive = [a for a in candidates if a.health != "dead"]
        if not alive:
            raise NoAccountAvailable(
                "Kimi rejected every account's token: log in again and send the new token",
                status=401,
                type="invalid_request_error",
                code="account_dead",
            )
        rested = [a for a in alive if (a.view.cooling_until or 0.0) <= now]
        if not rested:
            wait = min((a.view.cooling_until or now) for a in alive) - now
            raise NoAccountAvailable(
                f"all accounts are cooling down after rate limits; retry in {wait:.0f} s",
                code="accounts_cooling",
                retry_after=wait,
            )
        free = [a for a in rested if self.in_flight(a.id) < self.max_concurrency]
        if not free:
            raise NoAccountAvailable("all accounts are busy", code="accounts_busy", retry_after=1.0)
        order = {account_id: i for i, account_id in enumerate(ids)}
        best = min(
            free,
            key=lambda a: (a.id != prefer, self.in_flight(a.id), a.view.requests, order[a.id]),
        )
        self._in_flight[best.id] = self.in_flight(best.id) + 1
        try:
            await self.store.count_request(best.id, now=now)
        except BaseException:  # the store failed (or the request was cancelled): no slot taken
            self.release(best.id)
            raise
        return best

    async def try_choose(
        self, ids: Sequence[str], exclude: set[str]
    ) -> Account | NoAccountAvailable:
        """`choose`, with the refusal returned instead of raised."""
        try:
            return await self.choose(ids, exclude)
        except NoAccountAvailable as exc:
            return exc

    async def take(
        self, ids: Sequence[str], exclude: set[str], prefer: str | None = None
    ) -> Account:
        """`choose`, waiting up to `busy_wait` seconds while every usable account is busy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.busy_wait
        while True:
            try:
                return await self.choose(ids, exclude, prefer)
            except NoAccountAvailable as exc:
                remaining = deadline - loop.time()
                if exc.code != "accounts_busy" or remaining <= 0:
                    raise
            if self._freed is None:
                self._freed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), remaining)

    def release(self, account_id: str) -> None:
        """Give a slot back and wake any request waiting for one."""
        left = self.in_flight(account_id) - 1
        if left > 0:
            self._in_flight[account_id] = left
        else:
            self._in_flight.pop(account_id, None)
        if self._freed is not None:
            self._freed.set()
            self._freed = None  # waiters hold the old event; the next wait gets a fresh one


def _strip_bearer(value: str) -> str:
    """The credentials with an optional leading `Bearer` scheme word removed."""
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else value.strip()
