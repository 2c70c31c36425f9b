"""Several processes on one PostgreSQL store: accounts are shared, and no refresh token is ever
sent to Kimi twice (Kimi rotates it on every use; a second use would kill the account).

1. Real `python -m addon.cli run` proxies on one `postgresql://` store take turns serving one
   account across access-token lifetimes: each refreshes with the token the other stored last.
2. The cross-process refresh race of tests/test_refresh_processes.py (its worker, its checks),
   on PostgreSQL: 4 processes use 10 accounts at once and keep refreshing them.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from addon.store._pg import PgStore
from fixtures.fake_kimi import FakeKimi
from tests.service_process import running_service
from tests.test_refresh_processes import run_workers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORIGINAL = "rt-pg-shared-original-6a1e"
TOKENS = [f"rt-pg-race-{n:02d}-3b8d1f7c2e" for n in range(10)]
ROUNDS = 6


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_two_proxies_on_one_postgres_store_share_an_account(tmp_path, postgres_server):
    url = postgres_server.new_database()
    clock = Clock()
    body = {"model": "kimi", "messages": [{"role": "user", "content": "shared"}]}
    headers = {"authorization": f"Bearer {ORIGINAL}"}
    async with FakeKimi(dialect_routes="legacy", access_ttl=60, clock=clock) as fake:
        args = ["--kimi-base-url", fake.base_url, "--dialect", "legacy", "--store", url]
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with (
            running_service(args, tmp_path / "a", name="a") as one,
            running_service(args, tmp_path / "b", name="b") as two,
            httpx.AsyncClient(timeout=30) as http,
        ):
            for proxy in (one, two, one, two, two, one):
                resp = await http.post(
                    proxy.url + "/v1/chat/completions", json=body, headers=headers
                )
                assert resp.status_code == 200, resp.text
                clock.now += 61  # the access token expires: the next request refreshes
            ready = await http.get(one.url + "/readyz")
            assert ready.status_code == 200
        bearers = [c.headers["authorization"][7:] for c in fake.record.refresh_calls()]
        assert len(bearers) == 6
        assert len(set(bearers)) == 6, "a refresh token was used twice"
        assert bearers[0] == ORIGINAL
        assert all(c.status == 200 for c in fake.record.refresh_calls())
        assert len(fake.accounts) == 1
        assert not any(a.dead for a in fake.accounts.values())
    store = await PgStore.connect(url)
    try:
        views = await store.list_accounts()
        assert len(views) == 1
        assert views[0].health == "ok"
    finally:
        await store.close()


async def test_processes_racing_on_postgres_send_each_refresh_token_once(postgres_server):
    url = postgres_server.new_database()
    processes = 4
    async with FakeKimi(dialect_routes="both", access_ttl=2.0) as fake:
        for token in TOKENS:
            fake.add_account(token)
        await (await PgStore.connect(url)).close()  # created (and migrated) once, before the race
        results = await run_workers(
            fake.base_url, url, processes, ROUNDS, TOKENS, timeout=90.0
        )
        refreshes = fake.record.refresh_calls()
        sent = Counter(r.headers["authorization"][7:] for r in refreshes)
        assert sent
        assert max(sent.values()) == 1, "a refresh token was sent to Kimi twice"
        assert set(TOKENS) <= set(sent)
        assert all(r.status == 200 for r in refreshes)
        assert len(refreshes) > len(TOKENS)
        assert not any(a.dead for a in fake.accounts.values())
    assert sum(r["client_401"] for r in results) == 0
    assert sum(r["auth_failed"] for r in results) == 0
    assert sum(r["calls"] for r in results) == processes * ROUNDS * len(TOKENS)
    store = await PgStore.connect(url)
    try:
        views = await store.list_accounts()
        assert len(views) == len(TOKENS)
        assert all(v.health == "ok" for v in views)
    finally:
        await store.close()
