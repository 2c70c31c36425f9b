"""DeleteChat is reported under two Connect services: the proxy finds the one Kimi serves, and no
conversation stays behind whichever it is (the fake serves one, the other, or both)."""

from __future__ import annotations

import pytest

from addon.upstream._delete_chat import delete_service_for
from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.test_e2e_dialects import sdk, user, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

GATEWAY = "kimi.gateway.chat.v1.ChatService"
CHAT = "kimi.chat.v1.ChatService"


@pytest.mark.parametrize("served", [(GATEWAY,), (CHAT,), (CHAT, GATEWAY)])
async def test_no_chat_stays_behind_whichever_delete_route_exists(served, tmp_path):
    async with (
        FakeKimi(dialect_routes="connect", delete_services=served) as fake,
        running_proxy(
            fake.base_url,
            tmp_path,
            kimi_dialect="connect",
            conversation_ttl=0,
            precreate_conversations=0,
        ) as proxy,
    ):
        async with sdk(proxy) as client:
            for n in range(3):
                await client.chat.completions.create(model="kimi", messages=[user(f"q{n}")])
        await wait_for(lambda: len(fake.record.deleted_conversations()) == 3)
        assert fake.record.live_conversations() == []
        attempts = [c.path.split("/")[2] for c in fake.record.requests if "DeleteChat" in c.path]
        # The live-verified client's service first; once a route worked it is used directly.
        if GATEWAY in served:
            assert attempts == [GATEWAY] * 3
        else:
            assert attempts == [GATEWAY, CHAT, CHAT, CHAT]
        assert delete_service_for(fake.base_url) == (GATEWAY if GATEWAY in served else CHAT)


async def test_neither_route_keeps_the_chat_for_a_later_attempt(tmp_path):
    async with (
        FakeKimi(dialect_routes="connect", delete_services=()) as fake,
        running_proxy(
            fake.base_url,
            tmp_path,
            kimi_dialect="connect",
            conversation_ttl=0,
            precreate_conversations=0,
        ) as proxy,
    ):
        async with sdk(proxy) as client:
            await client.chat.completions.create(model="kimi", messages=[user("stay")])
        assert proxy.addon.runtime is not None
        keeper = proxy.addon.runtime.keeper
        assert keeper is not None
        await wait_for(lambda: keeper.delete_failures >= 1)
        # not counted as deleted, still ours and queued for a retry
        assert len(fake.record.live_conversations()) == 1
        chat_id = fake.record.live_conversations()[0].id
        assert await keeper.store.is_pending(chat_id)


async def test_the_working_route_is_remembered_across_restarts(tmp_path):
    from addon.upstream import _delete_chat

    async with FakeKimi(dialect_routes="connect", delete_services=(CHAT,)) as fake:
        for _ in range(2):
            _delete_chat._WORKING.clear()  # a new process: only the store remembers
            async with running_proxy(
                fake.base_url,
                tmp_path,
                kimi_dialect="connect",
                conversation_ttl=0,
                precreate_conversations=0,
            ) as proxy:
                async with sdk(proxy) as client:
                    await client.chat.completions.create(model="kimi", messages=[user("q")])
                await wait_for(lambda: fake.record.live_conversations() == [])
        attempts = [c.path.split("/")[2] for c in fake.record.requests if "DeleteChat" in c.path]
        # the first process guessed once; the restarted one went straight to the working route
        assert attempts == [GATEWAY, CHAT, CHAT]
