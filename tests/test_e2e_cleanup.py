"""End to end: conversation cleanup under load, through a real mitmproxy against the fake Kimi.

With `conversation_ttl=0` every finished reply queues its conversation claimed by this process
and deletes it at once; anything else due is claimed by a cleanup pass before its DELETE, one
pass at a time, and a pass skips what this process is deleting already. So 50 concurrent chats
cost exactly one DELETE per conversation, and the proxy keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

TOKEN = "rt-cleanup-load-8d2e61c0f4"


async def one_chat(http: httpx.AsyncClient, url: str, fake: FakeKimi, text: str) -> str:
    """One good non-streamed chat; the id of the (only) Kimi conversation it used."""
    resp = await http.post(
        url + "/v1/chat/completions",
        json={"model": "kimi", "messages": [{"role": "user", "content": text}]},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status_code == 200, resp.text
    assert_valid("openai.response", resp.json())
    (chat,) = {r.path.split("/")[3] for r in fake.record.calls("completion")}
    return chat


async def test_fifty_concurrent_chats_with_ttl_0_delete_each_conversation_once(tmp_path):
    # A little latency on every Kimi call keeps DELETEs in flight while other replies finish.
    async with (
        FakeKimi(dialect_routes="legacy", rtt=0.02, token_rate=400.0) as fake,
        running_proxy(
            fake.base_url,
            tmp_path,
            kimi_dialect="legacy",
            conversation_ttl=0,
            max_account_concurrency=50,
        ) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        body = {"model": "kimi", "messages": [{"role": "user", "content": "a short question"}]}
        headers = {"authorization": f"Bearer {TOKEN}"}
        pings: list[float] = []
        done = asyncio.Event()

        async def chat(n: int) -> None:
            resp = await http.post(
                proxy.url + "/v1/chat/completions",
                json={**body, "user": f"client-{n}"},
                headers=headers,
            )
            assert resp.status_code == 200, resp.text
            assert_valid("openai.response", resp.json())

        async def ping() -> None:
            while not done.is_set():
                started = time.monotonic()
                resp = await http.get(proxy.url + "/ping", timeout=5)
                assert resp.text == "pong"
                pings.append(time.monotonic() - started)
                await asyncio.sleep(0.05)

        pinger = asyncio.create_task(ping())
        await asyncio.gather(*(chat(n) for n in range(50)))
        chats = {r.path.split("/")[3] for r in fake.record.calls("completion")}
        assert len(chats) == 50

        async def all_deleted() -> None:
            while any(fake.record.conversations[c].deleted_at is None for c in chats):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(all_deleted(), 20)
        await asyncio.sleep(1.5)  # a cleanup tick or more: nothing deletes them again
        done.set()
        await pinger

        deletes = Counter(r.path.rsplit("/", 1)[1] for r in fake.record.calls("delete"))
        assert set(chats) <= set(deletes)
        assert max(deletes.values()) == 1, f"DELETEs per conversation: {deletes.most_common(3)}"
        assert all(r.status == 200 for r in fake.record.calls("delete"))
        assert pings
        assert max(pings) < 5.0  # /ping kept answering during the load (it stalled for minutes)
        assert proxy.addon.runtime is not None
        assert proxy.addon.runtime.store is not None
        left = await proxy.addon.runtime.store.due_deletions(float("inf"))
        assert {p.conversation_id for p in left}.isdisjoint(chats)


async def test_ttl_0_keeps_no_exchange_and_a_pass_claims_once_unless_its_batch_is_full(tmp_path):
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy", conversation_ttl=0) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        assert proxy.addon.runtime is not None
        keeper = proxy.addon.runtime.keeper
        assert keeper is not None
        store = keeper.store
        claims = 0
        claimed: list[str] = []
        claim = store.claim_due_deletions

        async def counting(*args: object, **kwargs: object) -> object:
            nonlocal claims
            claims += 1
            found = await claim(*args, **kwargs)  # type: ignore[arg-type]
            claimed.extend(p.conversation_id for p in found)
            return found

        store.claim_due_deletions = counting  # type: ignore[method-assign]
        chat = await one_chat(http, proxy.url, fake, "once")

        async def deleted() -> None:
            while fake.record.conversations[chat].deleted_at is None:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(deleted(), 10)
        # The reply's end queued it claimed by this process and deleted it: no pass claimed it.
        assert chat not in claimed
        assert len(fake.record.calls("delete")) == 1
        assert not await store.is_pending(chat)  # and marked deleted
        # The conversation is gone at once: an exchange saved for it could never be continued.
        assert await store._read("SELECT key FROM exchanges") == []

        # Five conversations due now, two per claim: full, full, short. The short claim ends
        # the pass; a pass that claimed again after it would make four.
        (account,) = await store.list_accounts()
        for n in range(5):
            await store.schedule_deletion(
                account.id, f"gone-{n}", dialect="legacy", due_at=keeper.clock() - 1
            )
        claims = 0
        keeper.claim_batch = 2
        deleted_before = keeper.deleted
        await keeper.delete_due()
        assert claims == 3
        assert keeper.deleted - deleted_before == 5  # unknown to the fake: a 404 counts as gone
        assert await store.due_deletions(keeper.clock()) == []


async def test_a_pass_skips_the_conversation_a_reply_is_deleting_already(tmp_path):
    """A pass takes this process's own claims again (to finish one cut short), so without
    the in-delete mark the periodic pass would send a second DELETE for a reply's conversation
    whose first DELETE Kimi is still answering."""
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(
            fake.base_url,
            tmp_path,
            kimi_dialect="legacy",
            conversation_ttl=0,
            precreate_conversations=0,
        ) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        assert proxy.addon.runtime is not None
        keeper = proxy.addon.runtime.keeper
        assert keeper is not None
        fake.set_scenario(Scenario.of(Fault(kind="delay", match="delete", seconds=0.5)))
        chat = await one_chat(http, proxy.url, fake, "slow delete")
        while not fake.record.calls("delete"):
            await asyncio.sleep(0.01)
        await keeper.delete_due(everything=True)  # while Kimi still answers the first DELETE
        while fake.record.conversations[chat].deleted_at is None:
            await asyncio.sleep(0.02)
        assert keeper.deleted == 1
        assert len(fake.record.calls("delete")) == 1
        assert not await keeper.store.is_pending(chat)
