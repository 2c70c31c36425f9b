"""End to end: the official openai SDK → a real mitmproxy with our addon → the fake Kimi.

Assertions are on what the client got AND on what the fake upstream recorded.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


async def wait_for(predicate, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout)


def client(proxy, token: str = "refresh-alice", **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=token, max_retries=0, **kw)


def completion_bodies(fake: FakeKimi) -> list[dict]:
    return [
        r.json
        for r in fake.record.requests
        if r.method == "POST" and r.path.endswith("/completion/stream")
    ]


async def sse_events(proxy, body: dict, token: str = "refresh-alice") -> list[str]:
    """Raw SSE `data:` payloads, to validate exactly what went over the wire."""
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-accel-buffering"] == "no"
        payloads = []
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                payloads.append(line[6:])
        return payloads


@pytest.fixture
async def proxy(fake, tmp_path):
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as p:
        yield p


async def test_stream_arrives_translated_and_valid(fake, proxy):
    payloads = await sse_events(
        proxy,
        {"model": "kimi", "stream": True, "messages": [{"role": "user", "content": "Hello Kimi"}]},
    )
    assert payloads[-1] == "[DONE]"
    assert payloads.count("[DONE]") == 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "Hello Kimi" in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The prompt really reached Kimi, unflattened.
    assert completion_bodies(fake)[0]["messages"] == [{"role": "user", "content": "Hello Kimi"}]


async def test_openai_sdk_stream_and_non_stream(fake, proxy):
    async with client(proxy) as sdk:
        await _stream_and_whole(sdk)


async def _stream_and_whole(sdk):
    stream = await sdk.chat.completions.create(
        model="kimi", stream=True, messages=[{"role": "user", "content": "streamed please"}]
    )
    parts = []
    async for chunk in stream:
        assert_valid("openai.chunk", chunk.to_dict())
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    assert "streamed please" in "".join(parts)

    completion = await sdk.chat.completions.create(
        model="kimi", messages=[{"role": "user", "content": "whole please"}]
    )
    assert_valid("openai.response", completion.to_dict())
    assert "whole please" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


async def test_sync_client_in_a_thread(fake, proxy):
    def call() -> str:
        with openai.OpenAI(
            base_url=proxy.url + "/v1", api_key="refresh-sync", max_retries=0
        ) as sdk:
            result = sdk.chat.completions.create(
                model="kimi", messages=[{"role": "user", "content": "from a sync client"}]
            )
        return result.choices[0].message.content or ""

    assert "from a sync client" in await asyncio.to_thread(call)


async def test_models_ping_and_404(proxy):
    async with client(proxy) as sdk:
        models = await sdk.models.list()
    ids = {m.id for m in models.data}
    assert {"kimi", "kimi-search", "kimi-k1"} <= ids
    async with httpx.AsyncClient() as http:
        ping = await http.get(proxy.url + "/ping")
        assert ping.text == "pong"
        missing = await http.get(proxy.url + "/v1/nothing-here")
        assert missing.status_code == 404
        assert_valid("openai.error", missing.json())
        assert missing.headers["access-control-allow-origin"] == "*"
        preflight = await http.options(proxy.url + "/v1/chat/completions")
        assert preflight.status_code == 204


async def test_bad_request_is_a_400_naming_the_field(fake, proxy):
    async with client(proxy) as sdk:
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.chat.completions.create(model="kimi", messages=[])
    body = info.value.body
    assert isinstance(body, dict)
    assert body["param"] == "messages"
    # Nothing reached Kimi.
    assert completion_bodies(fake) == []


async def test_missing_token_is_401(proxy):
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "kimi", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert resp.status_code == 401
    assert_valid("openai.error", resp.json())


async def test_multi_turn_by_history_uses_one_conversation(fake, proxy):
    messages: list[dict] = [{"role": "user", "content": "turn one"}]
    async with client(proxy) as sdk:
        for turn in ("turn two", "turn three"):
            result = await sdk.chat.completions.create(model="kimi", messages=messages)
            messages += [
                {"role": "assistant", "content": result.choices[0].message.content},
                {"role": "user", "content": turn},
            ]
        await sdk.chat.completions.create(model="kimi", messages=messages)
    bodies = completion_bodies(fake)
    assert [b["messages"][0]["content"] for b in bodies] == ["turn one", "turn two", "turn three"]
    conversations = {
        r.path.split("/")[3] for r in fake.record.requests if r.path.endswith("/completion/stream")
    }
    assert len(conversations) == 1


async def test_conversation_id_continues(fake, proxy):
    async with client(proxy) as sdk:
        first = await sdk.chat.completions.create(
            model="kimi", messages=[{"role": "user", "content": "remember 42"}]
        )
        second = await sdk.chat.completions.create(
            model="kimi",
            messages=[
                {"role": "user", "content": "ignored history"},
                {"role": "user", "content": "what number?"},
            ],
            extra_body={"conversation_id": first.id},
        )
    assert second.id == first.id
    assert completion_bodies(fake)[-1]["messages"][0]["content"] == "what number?"


async def test_conversation_deleted_when_ttl_is_zero(fake, tmp_path):
    async with running_proxy(
        fake.base_url,
        tmp_path,
        kimi_dialect="legacy",
        conversation_ttl=0,
        precreate_conversations=0,
    ) as proxy:
        async with client(proxy) as sdk:
            await sdk.chat.completions.create(
                model="kimi", messages=[{"role": "user", "content": "short lived"}]
            )
        await wait_for(lambda: not fake.record.live_conversations())
    assert fake.record.deleted_conversations()


async def test_shutdown_deletes_every_conversation(fake, tmp_path):
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy:
        async with client(proxy) as sdk:
            await sdk.chat.completions.create(
                model="kimi", messages=[{"role": "user", "content": "kept for a while"}]
            )
        assert fake.record.live_conversations()
    assert fake.record.live_conversations() == []


async def test_shutdown_lets_a_running_deletion_finish_instead_of_deleting_twice(fake, tmp_path):
    """With TTL 0 the reply's end starts its conversation's deletion; the proxy stops while
    Kimi is still answering that DELETE. It finishes, so the final pass (which takes this
    process's own claims again) does not send a second one."""
    fake.set_scenario(Scenario.of(Fault(kind="delay", match="delete", seconds=0.6)))
    async with running_proxy(
        fake.base_url,
        tmp_path,
        kimi_dialect="legacy",
        conversation_ttl=0,
        precreate_conversations=0,
    ) as proxy:
        async with client(proxy) as sdk:
            await sdk.chat.completions.create(
                model="kimi", messages=[{"role": "user", "content": "gone at once"}]
            )
        await wait_for(lambda: len(fake.record.calls("delete")) == 1)
        # leaving the block stops the proxy while that DELETE is still being answered
    deletes = fake.record.calls("delete")
    assert len(deletes) == 1, [d.path for d in deletes]
    assert fake.record.live_conversations() == []
    assert len(fake.record.deleted_conversations()) == 1


async def test_search_model_cites_and_annotates(fake, proxy):
    async with client(proxy) as sdk:
        completion = await sdk.chat.completions.create(
            model="kimi-search", messages=[{"role": "user", "content": "search this"}]
        )
    assert completion_bodies(fake)[0]["use_search"] is True
    message = completion.to_dict()["choices"][0]["message"]
    assert message["annotations"], message
    assert message["annotations"][0]["type"] == "url_citation"


async def test_tokens_never_logged(fake, tmp_path, caplog):
    caplog.set_level("DEBUG")
    token = "refresh-secret-value-123456"
    async with (
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
        client(proxy, token) as sdk,
    ):
        await sdk.chat.completions.create(
            model="kimi", messages=[{"role": "user", "content": "hi"}]
        )
    assert caplog.records, "the proxy should log one line per request"
    assert token not in caplog.text
    for account in fake.accounts.values() if hasattr(fake, "accounts") else ():
        assert account.current_refresh_token not in caplog.text


async def test_multi_account_history_stays_on_the_account_holding_the_conversation(fake, proxy):
    # Least-busy choice alone would move turn two to the other (less used) account, which
    # cannot continue the first account's conversation.
    async with client(proxy, "refresh-one,refresh-two") as sdk:
        messages: list[dict] = [{"role": "user", "content": "first turn"}]
        first = await sdk.chat.completions.create(model="kimi", messages=messages)
        messages += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "second turn"},
        ]
        second = await sdk.chat.completions.create(model="kimi", messages=messages)
    assert second.id == first.id
    assert completion_bodies(fake)[-1]["messages"][0]["content"] == "second turn"


async def test_regenerating_a_turn_starts_a_new_conversation(fake, proxy):
    # Kimi's conversation already holds the answer being regenerated: continuing it would show
    # Kimi the discarded turn, so the regenerated history is sent afresh (flattened).
    async with client(proxy) as sdk:
        messages: list[dict] = [{"role": "user", "content": "first"}]
        first = await sdk.chat.completions.create(model="kimi", messages=messages)
        messages += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "second"},
        ]
        second = await sdk.chat.completions.create(model="kimi", messages=messages)
        again = await sdk.chat.completions.create(model="kimi", messages=messages)
    assert second.id == first.id
    assert again.id != first.id
    prompt = completion_bodies(fake)[-1]["messages"][0]["content"]
    assert "first" in prompt
    assert "second" in prompt
