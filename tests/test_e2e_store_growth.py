"""End to end: clients cannot grow the account store without bound.

Junk tokens cost at most a few rows: `/token/check` is rate-limited per client address (the addon
tells the relay the address), one `Authorization` header names at most 32 tokens (a 400 that
says so), and rows whose token never worked expire.
"""

from __future__ import annotations

import time

import httpx
import pytest

from addon.store._store import Store
from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


async def test_junk_tokens_leave_a_bounded_number_of_rows(tmp_path):
    store_path = tmp_path / "accounts.sqlite3"
    real = [f"rt-real-{n:02d}-0d4c8e1f7a" for n in range(20)]
    async with (
        FakeKimi(dialect_routes="legacy", accept_any_refresh_token=False) as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy", store=store_path) as proxy,
        httpx.AsyncClient(timeout=10) as http,
    ):
        for token in real:
            fake.add_account(token)
        statuses = []
        started = time.monotonic()
        for n in range(100):
            resp = await http.post(
                proxy.url + "/token/check",
                json={"token": f"junk-{n:03d}-9b1e77c2d0"},
                # a client's own value must not pick its bucket
                headers={"x-kimi-free-api-client": f"203.0.113.{n}"},
            )
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                assert_valid("openai.error", resp.json())
                assert resp.json()["error"]["type"] == "rate_limit_error"
                assert int(resp.headers["retry-after"]) >= 1
            else:
                assert resp.json() == {"live": False}
        # 10 at once, then one more every 6 s (a slow machine may have earned one or two)
        checked = statuses.count(200)
        assert 10 <= checked <= 10 + int((time.monotonic() - started) / 6.0)
        assert statuses.count(429) == 100 - checked

        many = ",".join(f"junk-many-{n:03d}-51aa3e" for n in range(300))
        body = {"model": "kimi", "messages": [{"role": "user", "content": "hi"}]}
        resp = await http.post(
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {many}"},
        )
        assert resp.status_code == 400
        assert_valid("openai.error", resp.json())
        assert resp.json()["error"]["code"] == "too_many_tokens"
        assert "at most 32" in resp.json()["error"]["message"]

        # Twenty accounts in one header work.
        resp = await http.post(
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": "Bearer " + ",".join(real)},
        )
        assert resp.status_code == 200, resp.text

        assert proxy.addon.runtime is not None
        store = proxy.addon.runtime.store
        assert store is not None
        views = await store.list_accounts()
        assert len(views) == checked + len(real)  # the checked junk tokens, the 20 real accounts
        assert len(fake.record.refresh_calls()) == checked + 1  # junk checked once each; 1 used
        # The junk rows never worked: they expire; the real accounts stay.
        expired = await store.prune_unproven_accounts(now=time.time() + Store.UNPROVEN_TTL + 1)
        assert expired == checked + len(real) - 1
        assert [v.health for v in await store.list_accounts()] == ["ok"]
