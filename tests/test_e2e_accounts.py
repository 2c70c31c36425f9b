"""End to end: accounts and token rotation through a real mitmproxy against the fake Kimi.

The fake runs in rotating mode: each refresh retires the refresh token it was given, so a proxy
that ever sent a token twice would be refused. Every test ends by grepping everything the proxy
logged and answered for every token the fake ever issued or received (`Leaks.check`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import openai
import pytest

from addon.store._store import Store
from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import RunningProxy, running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ORIGINAL = "rt-original-7c1f9e2b4d"
ACCOUNT_A = "rt-account-a-51d3e8f0aa"
ACCOUNT_B = "rt-account-b-93c7b2e6bb"
ADMIN_KEY = "sk-admin-4f8e2d1c9b7a6e5f"
TEAM_KEY = "sk-team-0a1b2c3d4e5f6a7b8c"
CONFIG_TOKEN = "rt-configured-alice-62e0d4c8"


class Clock:
    """The fake's clock: access tokens expire when a test moves it, not when it sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Leaks:
    """Everything the proxy said to clients, to grep for tokens at the end of a test."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.answers: list[str] = []
        caplog.set_level("DEBUG")
        caplog.set_level("DEBUG", logger="kimi_free_api")

    def add(self, resp: httpx.Response, body: str | None = None) -> None:
        headers = "\n".join(f"{k}: {v}" for k, v in resp.headers.multi_items())
        self.answers.append(
            f"{resp.status_code}\n{headers}\n\n{resp.text if body is None else body}"
        )

    def check(self, fake: FakeKimi, *, extra: Iterable[str] = ()) -> None:
        """No refresh token (original or rotated), access token or key in any log line or
        answer. The secrets come from the fake: its accounts and every bearer it received."""
        secrets = set(extra)
        for account in fake.accounts.values():
            secrets |= {account.initial_refresh_token, account.current_refresh_token}
            secrets |= set(account.access_tokens)
        for request in fake.record.requests:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                secrets.add(auth[7:].strip())
        secrets.discard("")
        assert secrets, "the test should have made Kimi issue tokens"
        assert self.caplog.records, "the proxy logs one line per request"
        logged = self.caplog.text
        for secret in secrets:
            assert secret not in logged, "a token reached the log"
            for answer in self.answers:
                assert secret not in answer, "a token reached a client"


@pytest.fixture
def leaks(caplog):
    return Leaks(caplog)


async def ask(
    proxy: RunningProxy,
    token: str,
    leaks: Leaks,
    text: str = "hello",
    *,
    stream: bool = False,
) -> tuple[httpx.Response, str]:
    """One chat completion; returns the response and the answer text ("" on an error)."""
    body = {"model": "kimi", "stream": stream, "messages": [{"role": "user", "content": text}]}
    async with httpx.AsyncClient(timeout=30) as http:
        if not stream:
            resp = await http.post(
                proxy.url + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {token}"},
            )
            leaks.add(resp)
            if resp.status_code != 200:
                assert_valid("openai.error", resp.json())
                return resp, ""
            completion = resp.json()
            assert_valid("openai.response", completion)
            return resp, completion["choices"][0]["message"]["content"]
        async with http.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {token}"},
        ) as resp:
            raw = (await resp.aread()).decode()
        leaks.add(resp, raw)
        if resp.status_code != 200:
            assert_valid("openai.error", json.loads(raw))
            return resp, ""
        payloads = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
        assert payloads[-1] == "[DONE]"
        text_parts = []
        for payload in payloads[:-1]:
            chunk = json.loads(payload)
            assert "error" not in chunk, chunk
            assert_valid("openai.chunk", chunk)
            for choice in chunk["choices"]:
                text_parts.append(choice["delta"].get("content") or "")
        return resp, "".join(text_parts)


async def admin_accounts(proxy: RunningProxy, leaks: Leaks, key: str = ADMIN_KEY) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        resp = await http.get(proxy.url + "/v1/accounts", headers=headers)
    leaks.add(resp)
    return resp


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kimi.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


async def stored_refresh_token(store_path: Path, client_token: str) -> str:
    """The current refresh token the store file holds for the account `client_token` names."""
    store = Store(store_path)
    try:
        return (await store.account_for_token(client_token, now=time.time())).refresh_token
    finally:
        await store.close()


def refresh_bearers(fake: FakeKimi) -> list[str]:
    return [r.headers["authorization"][7:] for r in fake.record.refresh_calls()]


def completions(fake: FakeKimi) -> list:
    return [r for r in fake.record.requests if r.route in ("completion", "chat")]


async def wait_for(predicate, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


# -- rotation ------------------------------------------------------------------------------------


def assert_rotated_chain(fake: FakeKimi, lifetimes: int) -> None:
    """One refresh per lifetime, each with the token the previous one returned: the original
    first, never a token twice (the fake would refuse a retired one), all accepted."""
    calls = fake.record.refresh_calls()
    assert len(calls) == lifetimes
    assert all(c.status == 200 for c in calls)
    bearers = refresh_bearers(fake)
    assert bearers[0] == ORIGINAL
    assert len(set(bearers)) == len(bearers)
    account = fake.account_for(ORIGINAL)
    assert account is not None
    assert account.refresh_count == lifetimes
    assert account.current_refresh_token not in bearers  # the newest one is unused yet


@pytest.mark.parametrize("precreate", [0, 1], ids=["create-inline", "precreated"])
async def test_original_token_works_across_expiries_rotations_and_a_restart(
    tmp_path, leaks, precreate
):
    clock = Clock()
    store_path = tmp_path / "accounts.sqlite3"
    options = {"kimi_dialect": "legacy", "precreate_conversations": precreate}
    async with FakeKimi(dialect_routes="legacy", access_ttl=60, clock=clock) as fake:
        async with running_proxy(fake.base_url, tmp_path, store=store_path, **options) as proxy:
            for lifetime in range(1, 5):
                resp, text = await ask(proxy, ORIGINAL, leaks, f"lifetime {lifetime}")
                assert resp.status_code == 200, resp.text
                assert f"lifetime {lifetime}" in text
                # A second request in the same lifetime needs no refresh.
                resp, _ = await ask(proxy, ORIGINAL, leaks, "same lifetime")
                assert resp.status_code == 200, resp.text
                assert_rotated_chain(fake, lifetime)
                # The rotation is in the file, not only in memory.
                current = fake.account_for(ORIGINAL).current_refresh_token
                assert await stored_refresh_token(store_path, ORIGINAL) == current
                clock.now += 61  # every access token Kimi issued so far is now expired
            clock.now -= 61  # keep the last token alive over the restart

        async with running_proxy(fake.base_url, tmp_path, store=store_path, **options) as proxy:
            resp, text = await ask(proxy, ORIGINAL, leaks, "after the restart")
            assert resp.status_code == 200, resp.text
            assert "after the restart" in text
            assert_rotated_chain(fake, 4)  # the stored access token was still good
            clock.now += 61
            resp, _ = await ask(proxy, ORIGINAL, leaks, "expired after the restart")
            assert resp.status_code == 200, resp.text
            assert_rotated_chain(fake, 5)
        assert await stored_refresh_token(store_path, ORIGINAL) == (
            fake.account_for(ORIGINAL).current_refresh_token
        )
        # Only one Kimi account was ever involved, however many tokens it went through.
        assert len(fake.accounts) == 1
        # Ten answers; a refused completion (an expired access token on a precreated
        # conversation) was retried once after the refresh, never answered as an error.
        assert [r.status for r in completions(fake)].count(200) == 10
        leaks.check(fake)


async def test_connect_jwt_expiring_within_the_margin_rotates_and_persists_each_time(
    tmp_path, leaks
):
    # Access JWTs with `exp` 5 s ahead are inside the pool's 30 s refresh margin: every request
    # refreshes, and every rotation must reach the store before the next one.
    store_path = tmp_path / "accounts.sqlite3"
    async with (
        FakeKimi(dialect_routes="connect", access_ttl=5) as fake,
        running_proxy(fake.base_url, tmp_path, store=store_path, kimi_dialect="connect") as proxy,
    ):
        for n in range(1, 5):
            resp, text = await ask(proxy, ORIGINAL, leaks, f"connect {n}", stream=n % 2 == 0)
            assert resp.status_code == 200, resp.text
            assert f"connect {n}" in text
            assert_rotated_chain(fake, n)
            current = fake.account_for(ORIGINAL).current_refresh_token
            assert await stored_refresh_token(store_path, ORIGINAL) == current
        leaks.check(fake)


async def test_concurrent_requests_needing_a_refresh_share_one_refresh_call(tmp_path, leaks):
    clock = Clock()
    # A slow refresh, so the second request surely arrives while the first one refreshes.
    slow = Scenario.of(Fault(kind="delay", match="refresh", seconds=0.3))
    async with (
        FakeKimi(dialect_routes="legacy", access_ttl=60, clock=clock, scenario=slow) as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", precreate_conversations=0
        ) as proxy,
    ):
        # First sight of the token: nothing cached yet.
        results = await asyncio.gather(*(ask(proxy, ORIGINAL, leaks, f"a{i}") for i in range(2)))
        assert [r.status_code for r, _ in results] == [200, 200]
        assert_rotated_chain(fake, 1)
        # Both cached tokens refused by Kimi at once (expired): one refresh again.
        clock.now += 61
        results = await asyncio.gather(*(ask(proxy, ORIGINAL, leaks, f"b{i}") for i in range(2)))
        assert [r.status_code for r, _ in results] == [200, 200]
        assert_rotated_chain(fake, 2)
        leaks.check(fake)


# -- health: dead, cooling, failover ------------------------------------------------------------


@pytest.mark.parametrize("death", ["dead_refresh", "unknown_token"])
async def test_dead_account_is_remembered_and_reported_without_tokens(tmp_path, leaks, death):
    config = write_config(tmp_path, f"admin_key: {ADMIN_KEY}\n")
    kwargs: dict = {"dialect_routes": "legacy"}
    if death == "dead_refresh":
        kwargs["scenario"] = Scenario.of(Fault(kind="dead_refresh", match="refresh"))
    else:
        kwargs["accept_any_refresh_token"] = False
    async with (
        FakeKimi(**kwargs) as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy", kimi_config=config) as proxy,
    ):
        resp, _ = await ask(proxy, ORIGINAL, leaks)
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "authentication_error"
        assert len(fake.record.refresh_calls()) == 1
        # Dead is remembered: refused at once, Kimi is not asked again.
        for stream in (False, True):
            resp, _ = await ask(proxy, ORIGINAL, leaks, stream=stream)
            assert resp.status_code == 401
            assert resp.headers["content-type"].startswith("application/json")
            assert "log in again" in resp.json()["error"]["message"]
        assert len(fake.record.refresh_calls()) == 1
        assert completions(fake) == []

        listing = await admin_accounts(proxy, leaks)
        assert listing.status_code == 200
        [account] = listing.json()["data"]
        assert account["health"] == "dead"
        assert account["source"] == "client"
        assert "log in again" in account["last_error"]  # readable: the redaction spares prose
        assert "***" not in account["last_error"]
        assert account["in_flight"] == 0
        assert not any("token" in name and "expires" not in name for name in account)
        # Without the admin key: no listing.
        for key in ("", ORIGINAL, "sk-not-the-admin-key-0000"):
            refused = await admin_accounts(proxy, leaks, key)
            assert refused.status_code == 401
            assert_valid("openai.error", refused.json())
        leaks.check(fake, extra=[ADMIN_KEY])


#: long enough that the first answer (a token refresh, a conversation, the refusal) fits inside
#: it on a loaded machine, which the premise below checks
COOLDOWN = 3


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="stream_pushing", match="completion", times=1),
        Fault(kind="long_text_limit", match="completion", times=1),
        Fault(kind="long_text_limit", match="completion", times=1, wire="json"),
    ],
    ids=["stream_pushing", "long_text_in_stream", "long_text_json"],
)
async def test_rate_limited_account_cools_down_then_serves_again(tmp_path, leaks, fault):
    async with (
        FakeKimi(dialect_routes="legacy", scenario=Scenario.of(fault)) as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", account_cooldown=COOLDOWN
        ) as proxy,
    ):
        started = time.monotonic()
        resp, _ = await ask(proxy, ORIGINAL, leaks)
        assert resp.status_code == 429
        assert resp.json()["error"]["type"] == "rate_limit_error"
        refused_at = time.monotonic()  # the account cools until at most COOLDOWN s after this
        asked = len(completions(fake))
        assert asked == 1

        # Cooling: refused at once, without a call to Kimi.
        before = time.monotonic()
        resp, _ = await ask(proxy, ORIGINAL, leaks, stream=True)
        assert resp.status_code == 429
        assert resp.json()["error"]["code"] == "accounts_cooling"
        assert time.monotonic() - before < 0.8
        assert len(completions(fake)) == asked
        assert before - started < COOLDOWN  # the premise: this was inside the cooldown

        await asyncio.sleep(max(0.0, refused_at + COOLDOWN + 0.05 - time.monotonic()))
        resp, text = await ask(proxy, ORIGINAL, leaks, "rested")
        assert resp.status_code == 200, resp.text
        assert "rested" in text
        assert len(completions(fake)) == asked + 1
        leaks.check(fake)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="stream_pushing", match="completion", token=ACCOUNT_A),
        Fault(kind="http_status", match="completion", status=429, token=ACCOUNT_A),
        Fault(kind="dead_refresh", match="refresh", token=ACCOUNT_A),
    ],
    ids=["a-stream-pushing", "a-http-429", "a-dead"],
)
async def test_failover_before_the_first_byte_answers_from_the_next_account(tmp_path, leaks, fault):
    async with (
        FakeKimi(dialect_routes="legacy", scenario=Scenario.of(fault)) as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
    ):
        resp, text = await ask(proxy, f"{ACCOUNT_A},{ACCOUNT_B}", leaks, "fail over", stream=True)
        assert resp.status_code == 200, resp.text
        assert "fail over" in text  # one clean answer, no error event (checked in `ask`)
        account_b = fake.account_for(ACCOUNT_B)
        assert account_b is not None
        served = [r for r in completions(fake) if r.status == 200]
        assert [r.account_id for r in served] == [account_b.id]
        # The failed account is not tried again while it rests (or is dead).
        resp, _ = await ask(proxy, f"{ACCOUNT_A},{ACCOUNT_B}", leaks, "again")
        assert resp.status_code == 200
        assert [r.account_id for r in completions(fake) if r.status == 200] == [account_b.id] * 2
        leaks.check(fake)


# -- concurrency ---------------------------------------------------------------------------------


async def test_concurrency_cap_refuses_or_spreads_parallel_streams(tmp_path, leaks):
    # Each body write waits 20 ms: a stream takes about a second.
    slow = Scenario.of(Fault(kind="drip", match="completion", seconds=0.02))
    async with (
        FakeKimi(dialect_routes="legacy", scenario=slow) as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", max_account_concurrency=1
        ) as proxy,
    ):
        runtime = proxy.addon.runtime
        assert runtime is not None
        assert runtime.keeper is not None
        pool = runtime.keeper.pool
        pool.busy_wait = 0.3  # not an option; shortened so the test need not wait 2 s

        async def second_while_first_streams(token: str):
            first = asyncio.create_task(ask(proxy, token, leaks, "first", stream=True))
            # Recorded as soon as Kimi receives it, while the proxy holds the account's slot.
            await wait_for(lambda: len(completions(fake)) == 1)
            started = time.monotonic()
            second = await ask(proxy, token, leaks, "second", stream=True)
            return await first, second, time.monotonic() - started

        # One account, cap 1: the second stream waits `busy_wait`, then 429 accounts_busy.
        (resp1, text1), (resp2, _), waited = await second_while_first_streams(ORIGINAL)
        assert resp1.status_code == 200
        assert "first" in text1
        assert resp2.status_code == 429
        assert resp2.json()["error"]["code"] == "accounts_busy"
        assert waited >= 0.3
        assert len(completions(fake)) == 1  # the refused one never reached Kimi

        # Two accounts, cap 1 each: both streams run at once, one per account.
        fake.record.clear()
        pair = f"{ACCOUNT_A},{ACCOUNT_B}"
        (resp1, text1), (resp2, text2), _ = await second_while_first_streams(pair)
        assert (resp1.status_code, resp2.status_code) == (200, 200)
        assert "first" in text1
        assert "second" in text2
        accounts = {r.account_id for r in completions(fake)}
        assert accounts == {fake.account_for(ACCOUNT_A).id, fake.account_for(ACCOUNT_B).id}

        # A wait long enough for the first stream to end: the second is served after it.
        fake.record.clear()
        pool.busy_wait = 10.0
        (resp1, _), (resp2, text2), _ = await second_while_first_streams(ORIGINAL)
        assert (resp1.status_code, resp2.status_code) == (200, 200)
        assert "second" in text2
        first_end, second_start = (r.time for r in completions(fake))
        assert second_start >= first_end
        leaks.check(fake)


# -- gateway keys ----------------------------------------------------------------------------------


async def test_gateway_keys_allow_the_key_and_refuse_raw_tokens(tmp_path, leaks, monkeypatch):
    monkeypatch.setenv("KIMI_TEST_ALICE", CONFIG_TOKEN)
    config = write_config(
        tmp_path,
        "accounts:\n"
        "  - label: alice\n"
        "    refresh_token_env: KIMI_TEST_ALICE\n"
        "keys:\n"
        f"  - key: {TEAM_KEY}\n"
        "    label: team\n"
        "require_key: true\n"
        f"admin_key: {ADMIN_KEY}\n",
    )
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy", kimi_config=config) as proxy,
    ):
        for stream in (False, True):
            resp, text = await ask(proxy, TEAM_KEY, leaks, "with the key", stream=stream)
            assert resp.status_code == 200, resp.text
            assert "with the key" in text
        alice = fake.account_for(CONFIG_TOKEN)
        assert alice is not None
        assert {r.account_id for r in completions(fake)} == {alice.id}

        async with openai.AsyncOpenAI(
            base_url=proxy.url + "/v1", api_key=TEAM_KEY, max_retries=0
        ) as sdk:
            completion = await sdk.chat.completions.create(
                model="kimi", messages=[{"role": "user", "content": "sdk with the key"}]
            )
            leaks.answers.append(completion.model_dump_json())
        assert "sdk with the key" in (completion.choices[0].message.content or "")

        asked = len(fake.record.requests)
        # A raw Kimi token (the configured one, or any other) is refused.
        for token in (CONFIG_TOKEN, ORIGINAL):
            resp, _ = await ask(proxy, token, leaks)
            assert resp.status_code in (401, 403)
            assert resp.json()["error"]["code"] == "invalid_api_key"
        # A wrong or truncated key is refused.
        for token in ("sk-team-wrong-key-000000000", TEAM_KEY[:-1], f"{TEAM_KEY},{ORIGINAL}"):
            resp, _ = await ask(proxy, token, leaks)
            assert resp.status_code == 401
        assert len(fake.record.requests) == asked  # nothing refused reached Kimi

        # The gateway key is no admin key.
        assert (await admin_accounts(proxy, leaks, TEAM_KEY)).status_code == 401
        listing = await admin_accounts(proxy, leaks)
        [account] = listing.json()["data"]
        assert (account["label"], account["source"], account["health"]) == ("alice", "config", "ok")
        assert account["requests"] == 3
        leaks.check(fake, extra=[TEAM_KEY, ADMIN_KEY])


async def test_token_check_answers_live_or_not_without_tokens(tmp_path, leaks):
    async with (
        FakeKimi(dialect_routes="legacy", accept_any_refresh_token=False) as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
    ):
        fake.add_account(ACCOUNT_A)
        async with httpx.AsyncClient(timeout=10) as http:
            for token, live in ((ACCOUNT_A, True), (ACCOUNT_B, False), (ACCOUNT_A, True)):
                resp = await http.post(proxy.url + "/token/check", json={"token": token})
                leaks.add(resp)
                assert resp.status_code == 200
                assert resp.json() == {"live": live}
        # The first check rotated A's token; the second check of A used the cached access token.
        assert refresh_bearers(fake) == [ACCOUNT_A, ACCOUNT_B]
        resp, text = await ask(proxy, ACCOUNT_A, leaks, "checked then used")
        assert resp.status_code == 200
        assert "checked then used" in text
        assert len(fake.record.refresh_calls()) == 2
        leaks.check(fake)


async def test_configured_account_keeps_its_rotated_token_over_restarts(
    tmp_path, leaks, monkeypatch
):
    """The configured value is rotated away after the first refresh; a restart with the same
    config must go on with the stored token (Kimi refuses the configured one by then), and a
    changed configured value (the user logged in again) revives a dead account."""
    clock = Clock()
    store_path = tmp_path / "accounts.sqlite3"
    monkeypatch.setenv("KIMI_TEST_ALICE", CONFIG_TOKEN)
    config = write_config(
        tmp_path,
        "accounts:\n"
        "  - label: alice\n"
        "    refresh_token_env: KIMI_TEST_ALICE\n"
        "keys:\n"
        f"  - key: {TEAM_KEY}\n"
        "    label: team\n",
    )
    options = {"kimi_dialect": "legacy", "kimi_config": config}
    async with FakeKimi(dialect_routes="legacy", access_ttl=60, clock=clock) as fake:
        for run in range(2):
            async with running_proxy(fake.base_url, tmp_path, store=store_path, **options) as p:
                resp, text = await ask(p, TEAM_KEY, leaks, f"run {run}")
                assert resp.status_code == 200, resp.text
                assert f"run {run}" in text
            clock.now += 61
        bearers = refresh_bearers(fake)
        assert bearers[0] == CONFIG_TOKEN
        assert len(bearers) == 2
        assert len(set(bearers)) == 2  # the restart used the stored token, not the configured
        alice = fake.account_for(CONFIG_TOKEN)
        assert alice is not None
        assert alice.refresh_count == 2

        # Kimi ends the session: the account dies, and stays dead over a restart.
        fake.set_scenario(Scenario.of(Fault(kind="dead_refresh", match="refresh")))
        async with running_proxy(fake.base_url, tmp_path, store=store_path, **options) as p:
            resp, _ = await ask(p, TEAM_KEY, leaks)
            assert resp.status_code == 401
        calls = len(fake.record.refresh_calls())
        async with running_proxy(fake.base_url, tmp_path, store=store_path, **options) as p:
            resp, _ = await ask(p, TEAM_KEY, leaks)
            assert resp.status_code == 401
        assert len(fake.record.refresh_calls()) == calls

        # A new login, configured: the same account row comes back to life with it.
        fake.set_scenario(None)
        fresh = "rt-configured-alice-relogin-9a7b"
        monkeypatch.setenv("KIMI_TEST_ALICE", fresh)
        async with running_proxy(fake.base_url, tmp_path, store=store_path, **options) as p:
            resp, text = await ask(p, TEAM_KEY, leaks, "logged in again")
            assert resp.status_code == 200, resp.text
            assert "logged in again" in text
            listing = await admin_accounts(p, leaks, "")
            assert listing.status_code == 401  # no admin key configured: no listing at all
        assert refresh_bearers(fake)[-1] == fresh
        store = Store(store_path)
        try:
            [view] = await store.list_accounts()
            assert (view.label, view.health) == ("alice", "ok")
        finally:
            await store.close()
        leaks.check(fake, extra=[TEAM_KEY])
