from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from typing import Any

import pytest

from addon.accounts._pool import (
    AccessDenied,
    AccountPool,
    AuthFailed,
    NoAccountAvailable,
    RateLimited,
    TokenGrant,
    TransientFailure,
)
from addon.process._config import parse_config
from addon.store._store import Store
from translator import RemoteProtocolError

KEY = "sk-team-0123456789abcdef"
ADMIN = "sk-admin-0123456789abcdef"


def jwt(payload: dict) -> str:
    def seg(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'HS256'})}.{seg(payload)}.c2ln"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeKimi:
    """The refresh endpoint: each call rotates the refresh token (single holder)."""

    def __init__(self, clock: Clock, *, ttl: float | None = 600.0, expires_in_grant=False):
        self.clock = clock
        self.ttl = ttl
        self.expires_in_grant = expires_in_grant
        self.valid: set[str] = set()
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.n = 0

    def issue(self, name: str) -> str:
        self.valid.add(name)
        return name

    async def refresh(self, token: str) -> TokenGrant:
        self.calls.append(token)
        if self.gate is not None:
            await self.gate.wait()
        if token not in self.valid:
            raise AuthFailed("401")
        self.valid.discard(token)
        self.n += 1
        new = self.issue(f"{token.split('#')[0]}#{self.n}")
        if self.ttl is None:
            access = f"opaque-access-{self.n}"
        else:
            access = jwt({"sub": "u1", "exp": int(self.clock.now + self.ttl)})
        expires = self.clock.now + 42 if self.expires_in_grant else None
        return TokenGrant(access_token=access, refresh_token=new, expires_at=expires)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def store(tmp_path):
    s = Store(tmp_path / "s.db")
    yield s
    await s.close()


@pytest.fixture
def kimi(clock):
    return FakeKimi(clock)


def make_pool(store, kimi, clock, **kw):
    return AccountPool(store, refresh=kimi.refresh, clock=clock, **kw)


# -- resolve ------------------------------------------------------------------------------


async def test_resolve_comma_joined_tokens(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    accounts = await pool.resolve(" tokA , tokB,, tokA ,")
    assert len(accounts) == 2
    assert [a.refresh_token for a in accounts] == ["tokA", "tokB"]
    assert [a.id for a in await pool.resolve("Bearer tokA")] == [accounts[0].id]


@pytest.mark.parametrize("value", ["", "  ", "Bearer ", " , ,"])
async def test_resolve_missing_token(store, kimi, clock, value):
    with pytest.raises(AccessDenied) as info:
        await make_pool(store, kimi, clock).resolve(value)
    assert info.value.status == 401
    assert info.value.code == "missing_token"
    assert "missing token" in info.value.to_openai()["error"]["message"]


def config(**extra):
    data = {
        "accounts": [
            {"label": "alice", "refresh_token": "alice-token"},
            {"label": "bob", "refresh_token": "bob-token"},
        ],
        "keys": [{"key": KEY, "label": "team", "accounts": ["bob"]}],
        "admin_key": ADMIN,
    }
    data.update(extra)
    return parse_config(data)


async def test_gateway_keys_and_required_key(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    by_label = await pool.apply_config(config())
    assert pool.require_key
    assert [a.id for a in await pool.resolve(f"Bearer {KEY}")] == [by_label["bob"].id]
    with pytest.raises(AccessDenied) as info:
        await pool.resolve("sk-team-0123456789abcdeX")
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    with pytest.raises(AccessDenied, match="requires an API key") as info:
        await pool.resolve("alice-token")
    assert info.value.status == 401
    assert pool.is_admin(f"Bearer {ADMIN}")
    assert not pool.is_admin(KEY)
    # keys may be opened up again, and a key without accounts list means all configured
    await pool.apply_config(
        config(require_key=False, keys=[{"key": KEY, "label": "team"}], admin_key=None)
    )
    assert not pool.require_key
    assert not pool.is_admin(ADMIN)
    assert {a.id for a in await pool.resolve(KEY)} == {by_label["alice"].id, by_label["bob"].id}
    # the same account, by fingerprint
    assert (await pool.resolve("alice-token"))[0].id == by_label["alice"].id


async def test_key_without_accounts_is_forbidden(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    await pool.apply_config(parse_config({"keys": [{"key": KEY, "label": "empty"}]}))
    with pytest.raises(AccessDenied) as info:
        await pool.resolve(KEY)
    assert info.value.status == 403


# -- access tokens ------------------------------------------------------------------------


async def test_single_flight_refresh(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))
    kimi.gate = asyncio.Event()
    first = asyncio.create_task(pool.access_token(account))
    second = asyncio.create_task(pool.access_token(account))
    await asyncio.sleep(0.01)
    kimi.gate.set()
    a, b = await asyncio.gather(first, second)
    assert a == b
    assert kimi.calls == ["T1"]
    # cached now: no further call
    assert await pool.access_token(account) == a
    assert kimi.calls == ["T1"]


async def test_rotation_is_persisted_before_the_token_is_returned(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))
    events = []
    real = store.record_rotation

    def recording(*args, **kw):
        events.append("recorded")
        return real(*args, **kw)

    store.record_rotation = recording
    token = await pool.access_token(account)
    events.append("returned")
    assert events == ["recorded", "returned"]
    stored = await store.get_account(account.id)
    assert stored.refresh_token == "T1#1"
    assert stored.access_token == token
    # a fresh store instance (a restart) sees the rotation
    again = Store(store.path)
    assert (await again.get_account(account.id)).refresh_token == "T1#1"
    await again.close()


async def test_token_is_not_returned_when_the_rotation_cannot_be_saved(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))

    def failing(*args, **kw):
        raise OSError("disk full")

    store.record_rotation = failing
    with pytest.raises(OSError, match="disk full"):
        await pool.access_token(account)


async def test_refresh_survives_a_cancelled_caller(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))
    kimi.gate = asyncio.Event()
    caller = asyncio.create_task(pool.access_token(account))
    await asyncio.sleep(0.01)
    caller.cancel()
    kimi.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(10):
        await asyncio.sleep(0)
    assert (await store.get_account(account.id)).refresh_token == "T1#1"  # rotation not lost


async def test_expiry_from_jwt_exp_and_margin(store, kimi, clock):
    pool = make_pool(store, kimi, clock, refresh_margin=30.0)
    [account] = await pool.resolve(kimi.issue("T1"))
    first = await pool.access_token(account)
    assert (await store.get_account(account.id)).access_expires_at == clock.now + 600
    clock.now += 569  # 31 s left: still fresh
    assert await pool.access_token(account) == first
    clock.now += 2  # 29 s left: inside the margin
    second = await pool.access_token(account)
    assert second != first
    assert kimi.calls == ["T1", "T1#1"]


async def test_expiry_from_grant_then_default_ttl(store, clock):
    kimi = FakeKimi(clock, expires_in_grant=True)
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))
    await pool.access_token(account)
    assert (await store.get_account(account.id)).access_expires_at == clock.now + 42

    opaque = FakeKimi(clock, ttl=None)
    pool2 = make_pool(store, opaque, clock, default_access_ttl=300.0)
    [other] = await pool2.resolve(opaque.issue("U1"))
    token = await pool2.access_token(other)
    assert token == "opaque-access-1"
    assert (await store.get_account(other.id)).access_expires_at == clock.now + 300.0


async def test_dead_after_auth_failure_and_not_retried(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve("never-valid")
    with pytest.raises(AuthFailed):
        await pool.access_token(account)
    assert (await store.get_account(account.id)).health == "dead"
    assert kimi.calls == ["never-valid"]
    with pytest.raises(AuthFailed):
        await pool.access_token(account)
    assert kimi.calls == ["never-valid"]  # a dead account is not refreshed on every request
    with pytest.raises(NoAccountAvailable) as info:
        async with pool.acquire([account]):
            pass
    assert (info.value.status, info.value.code) == (401, "account_dead")


async def test_a_retired_token_is_never_sent_again(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))
    await pool.access_token(account)  # current T1#1, T1 retired
    kimi.valid = {"T1"}  # even if the service kept the old one alive and lost the new one
    await pool.invalidate_access(account)
    with pytest.raises(AuthFailed):
        await pool.access_token(account)
    assert kimi.calls == ["T1", "T1#1"]  # T1 was rotated by Kimi: it is not tried again
    assert (await store.get_account(account.id)).health == "dead"


async def test_a_retired_token_is_erased_once_its_successor_worked(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))
    await pool.access_token(account)
    assert (await store.get_account(account.id)).previous_refresh_token == "T1"
    await pool.confirm(account)  # a Kimi call with the new access token worked
    stored = await store.get_account(account.id)
    assert (stored.refresh_token, stored.previous_refresh_token) == ("T1#1", None)
    assert await pool.resolve("T1") == [stored]  # the original still finds its account


async def test_rotation_by_another_process_is_picked_up(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))
    real = kimi.refresh

    async def racing(token):
        if token == "T1":
            # another process refreshed T1 first and stored its rotation (access already expired)
            grant = await real("T1")
            await store.record_rotation(
                account.id,
                refresh_token=grant.refresh_token,
                access_token="stale",
                access_expires_at=clock.now - 1,
                now=clock.now,
            )
            raise AuthFailed("401: T1 was rotated away")
        return await real(token)

    pool._refresh_fn = racing
    token = await pool.access_token(account)
    assert token.count(".") == 2
    assert (await store.get_account(account.id)).refresh_token == "T1#2"
    assert (await store.get_account(account.id)).health == "ok"


async def test_transient_failure_propagates_without_killing(store, clock):
    async def down(token):
        raise TransientFailure("connect timeout")

    pool = AccountPool(store, refresh=down, clock=clock)
    [account] = await pool.resolve("T1")
    with pytest.raises(TransientFailure):
        await pool.access_token(account)
    assert (await store.get_account(account.id)).health == "ok"


async def test_invalidate_access_keeps_a_newer_token(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))
    token = await pool.access_token(account)
    await pool.invalidate_access(account, "some-older-token")
    assert await pool.access_token(account) == token
    await pool.invalidate_access(account, token)
    clock.now += 1  # the fake's next JWT differs by its exp
    assert await pool.access_token(account) != token
    assert len(kimi.calls) == 2


# -- leasing ------------------------------------------------------------------------------


async def test_least_busy_choice(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    a, b = await pool.resolve("A,B")
    async with pool.acquire([a, b]) as first:
        assert first.account.id == a.id  # tie: client order
        assert first.index == 0
        async with pool.acquire([a, b]) as second:
            assert second.account.id == b.id  # fewer in flight
            assert second.index == 1
    assert pool.in_flight(a.id) == pool.in_flight(b.id) == 0
    # both idle: A has served 1, B 1; serve one more on A, then B (fewer requests) is next
    async with pool.acquire([a]):
        pass
    async with pool.acquire([a, b]) as third:
        assert third.account.id == b.id
    assert (await store.get_account(a.id)).view.requests == 2


async def test_concurrency_cap_fails_fast(store, kimi, clock):
    pool = make_pool(store, kimi, clock, max_concurrency=1, busy_wait=0.05)
    [a] = await pool.resolve("A")
    async with pool.acquire([a]):
        with pytest.raises(NoAccountAvailable) as info:
            async with pool.acquire([a]):
                pass
        assert (info.value.status, info.value.code) == (429, "accounts_busy")
        assert info.value.retry_after == 1.0
    assert pool.in_flight(a.id) == 0


async def test_waits_briefly_for_a_free_slot(store, kimi, clock):
    pool = make_pool(store, kimi, clock, max_concurrency=1, busy_wait=5.0)
    [a] = await pool.resolve("A")
    lease = await pool.acquire([a])  # the awaitable form
    assert lease.account.id == a.id

    async def release_soon():
        await asyncio.sleep(0.05)
        await lease.__aexit__(None, None, None)

    releaser = asyncio.create_task(release_soon())
    async with pool.acquire([a]) as second:
        assert second.account.id == a.id
    await releaser


async def test_failover_order_and_marks(store, kimi, clock):
    pool = make_pool(store, kimi, clock, cooldown=60.0)
    a, b, c, d = await pool.resolve("A,B,C,D")
    async with pool.acquire([a, b, c, d]) as lease:
        assert lease.account.id == a.id
        assert (await lease.fail_over(AuthFailed("401 after refresh"))).id == b.id
        assert (await lease.fail_over(RateLimited("429", retry_after=10.0))).id == c.id
        assert (await lease.fail_over(TransientFailure("502"))).id == d.id
        assert pool.in_flight(a.id) == pool.in_flight(b.id) == pool.in_flight(c.id) == 0
        assert await lease.fail_over(RemoteProtocolError("busy", status=429)) is None
        assert lease.refusal.code == "accounts_exhausted"
        assert lease.account is None
    assert (await store.get_account(a.id)).health == "dead"
    vb = (await store.get_account(b.id)).view
    assert (vb.health, vb.cooling_until) == ("cooling", clock.now + 10.0)
    vc = (await store.get_account(c.id)).view
    assert (vc.health, vc.failures) == ("ok", 1)
    vd = (await store.get_account(d.id)).view
    assert (vd.health, vd.cooling_until) == ("cooling", clock.now + 60.0)  # default cooldown
    assert pool.in_flight(d.id) == 0


async def test_cooling_accounts_are_skipped_until_they_rest(store, kimi, clock):
    pool = make_pool(store, kimi, clock, cooldown=60.0)
    a, b = await pool.resolve("A,B")
    await pool.mark_cooling(a, None, "429")
    await pool.mark_cooling(b, 30.0, "429 Retry-After: 30")
    with pytest.raises(NoAccountAvailable) as info:
        async with pool.acquire([a, b]):
            pass
    assert (info.value.status, info.value.code) == (429, "accounts_cooling")
    assert info.value.retry_after == 30.0
    clock.now += 31
    async with pool.acquire([a, b]) as lease:
        assert lease.account.id == b.id
    assert (await store.get_account(b.id)).health == "ok"  # a clean exit ends the cooling
    assert (await store.get_account(a.id)).health == "cooling"


async def test_exception_inside_lease_marks_nothing(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [a] = await pool.resolve("A")
    await pool.mark_cooling(a, 0.0, "was limited")
    with pytest.raises(asyncio.CancelledError):
        async with pool.acquire([a]):
            raise asyncio.CancelledError
    assert (await store.get_account(a.id)).health == "cooling"
    assert pool.in_flight(a.id) == 0


async def test_describe_and_counters_have_no_tokens(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    [a] = await pool.resolve("secret-refresh-token-value")
    assert await pool.note_long_text_round(a) == 1
    assert await pool.note_long_text_round(a) == 2
    rows = await pool.describe()
    assert rows[0]["id"] == a.id
    assert rows[0]["in_flight"] == 0
    assert rows[0]["long_text_rounds"] == 2
    assert "secret-refresh-token-value" not in json.dumps(rows)
    await pool.mark_dead(a, "Bearer secret-refresh-token-value was refused")
    assert "secret-refresh-token-value" not in json.dumps(await pool.describe())
    await pool.mark_ok(a)
    assert (await store.get_account(a.id)).health == "ok"


async def test_a_rotation_is_committed_before_the_loop_runs_anything_else(tmp_path, clock):
    """A SIGKILL can land between any two turns of the event loop: the first turn after Kimi's
    answer already finds the new token committed in the file (read by another connection)."""
    path = tmp_path / "crash.db"
    store = Store(path)
    witness = sqlite3.connect(path)
    seen: list[str] = []
    try:
        unused: Any = None
        [account] = await AccountPool(store, refresh=unused, clock=clock).resolve("T1")

        def next_turn() -> None:  # a plain loop callback: it reads the file synchronously
            row = witness.execute(
                "SELECT refresh_token FROM accounts WHERE id = ?", (account.id,)
            ).fetchone()
            seen.append(row[0])

        async def refresh(token: str) -> TokenGrant:
            await asyncio.sleep(0)
            # Kimi has answered: the next loop turn may be the last one this process gets.
            asyncio.get_running_loop().call_soon(next_turn)
            return TokenGrant(access_token="a1", refresh_token="T2", expires_at=clock.now + 600)

        pool = AccountPool(store, refresh=refresh, clock=clock)
        assert await pool.access_token(account) == "a1"
        assert seen == ["T2"]
    finally:
        await store.close()
        witness.close()


async def test_an_authorization_header_names_at_most_32_tokens(store, kimi, clock):
    pool = make_pool(store, kimi, clock)
    assert len(await pool.resolve(",".join(f"tok-{n}" for n in range(20)))) == 20
    with pytest.raises(AccessDenied) as info:
        await pool.resolve(",".join(f"junk-{n}" for n in range(300)))
    assert (info.value.status, info.value.code) == (400, "too_many_tokens")
    assert "at most 32" in info.value.message
    assert len(await store.list_accounts()) == 20  # the refused header made no account


async def test_a_refused_token_that_another_process_replaced_means_use_its_new_token(
    store, kimi, clock
):
    """The race of the issue: another process rotated T1 and stored a fresh access token while
    this one was sending T1. The refusal is not "dead": the stored access token is used."""
    pool = make_pool(store, kimi, clock)
    [account] = await pool.resolve(kimi.issue("T1"))
    real = kimi.refresh

    async def racing(token):
        grant = await real(token)  # the other process wins the rotation of T1...
        await store.record_rotation(
            account.id,
            refresh_token=grant.refresh_token,
            access_token=grant.access_token,
            access_expires_at=clock.now + 600,
            now=clock.now,
        )
        raise AuthFailed("401: T1 was rotated away")  # ...and this one's T1 is refused

    pool._refresh_fn = racing
    token = await pool.access_token(account)
    stored = await store.get_account(account.id)
    assert token == stored.access_token
    assert stored.health == "ok"
    assert kimi.calls == ["T1"]  # T1#1 was not spent: it is the other process's, now the store's


async def test_a_refresh_waits_for_another_processes_lock_then_uses_its_token(
    tmp_path, kimi, clock
):
    path = tmp_path / "shared.db"
    ours, theirs = Store(path), Store(path)
    try:
        pool = make_pool(ours, kimi, clock)
        [account] = await pool.resolve(kimi.issue("T1"))
        assert await theirs.try_refresh_lock(account.id, owner="other", ttl=30.0, now=clock.now)
        waiting = asyncio.create_task(pool.access_token(account))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert kimi.calls == []  # nothing is sent while the other process refreshes
        grant = await kimi.refresh("T1")  # the other process's refresh
        await theirs.record_rotation(
            account.id,
            refresh_token=grant.refresh_token,
            access_token=grant.access_token,
            access_expires_at=clock.now + 600,
            now=clock.now,
        )
        await theirs.release_refresh_lock(account.id, owner="other")
        assert await asyncio.wait_for(waiting, 5) == grant.access_token
        assert kimi.calls == ["T1"]
    finally:
        await ours.close()
        await theirs.close()
