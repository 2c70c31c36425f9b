"""End to end over both upstream dialects: the openai SDK → a real mitmproxy with our addon →
the fake Kimi, which serves the legacy (REST + SSE) and the Connect routes at once.

Every test runs twice, `kimi_dialect="legacy"` and `kimi_dialect="connect"`, unless the feature
exists in one dialect only. Assertions are on what the client got AND on what the fake recorded.
The helpers at the top are shared with tests/test_e2e_faults.py and tests/test_e2e_files.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest

from addon.store._store import Store
from fixtures.fake_kimi import ConversationRecord, FakeKimi, RecordedRequest
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

DIALECTS = ("legacy", "connect")
TOKEN = "refresh-alice"


# --- shared helpers --------------------------------------------------------------------------


async def wait_for(predicate, timeout: float = 5.0) -> None:
    """Poll `predicate` until it is true; TimeoutError after `timeout` seconds."""

    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout)


def sdk(proxy, token: str = TOKEN, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=token, max_retries=0, **kw)


def stream_calls(fake: FakeKimi, dialect: str) -> list[RecordedRequest]:
    """The streaming answer calls the fake received (legacy completion / Connect Chat)."""
    return fake.record.calls("completion" if dialect == "legacy" else "chat")


def used_conversations(fake: FakeKimi) -> list[ConversationRecord]:
    """Conversations that got at least one message (pre-created spares have none)."""
    return [c for c in fake.record.conversations.values() if c.messages]


def texts(conversation: ConversationRecord) -> list[str]:
    return [m.text for m in conversation.messages]


async def post_raw(
    proxy, body: dict[str, Any], token: str = TOKEN, *, timeout: float = 30
) -> tuple[int, dict[str, str], list[str]]:
    """POST a chat completion with httpx; (status, headers, every line of the body)."""
    async with (
        httpx.AsyncClient(timeout=timeout) as http,
        http.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {token}"},
        ) as resp,
    ):
        lines = [line async for line in resp.aiter_lines()]
        return resp.status_code, dict(resp.headers), lines


def data_payloads(lines: list[str]) -> list[str]:
    return [line[6:] for line in lines if line.startswith("data: ")]


def valid_chunks(payloads: list[str]) -> list[dict[str, Any]]:
    """Parse and validate every payload before `[DONE]`, which must come exactly once, last."""
    assert payloads, "no data lines at all"
    assert payloads[-1] == "[DONE]", payloads[-3:]
    assert payloads.count("[DONE]") == 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        if "error" in chunk:
            assert_valid("openai.error", chunk)
        else:
            assert_valid("openai.chunk", chunk)
    return chunks


def delta_text(chunks: list[dict[str, Any]], key: str = "content") -> str:
    return "".join((c["choices"][0]["delta"].get(key) or "") for c in chunks if c.get("choices"))


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c.get("choices") and c["choices"][0].get("finish_reason")
    ]


def error_body(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert_valid("openai.error", body)
    return body["error"]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def proxy(fake, dialect, tmp_path):
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect=dialect) as p:
        yield p


# --- the core suite --------------------------------------------------------------------------


async def test_stream_and_non_stream_with_the_async_sdk(fake, dialect, proxy):
    async with sdk(proxy) as client:
        stream = await client.chat.completions.create(
            model="kimi", stream=True, messages=[user("streamed please")]
        )
        chunks = []
        async for chunk in stream:
            chunks.append(chunk.to_dict())
            assert_valid("openai.chunk", chunks[-1])
        whole = await client.chat.completions.create(model="kimi", messages=[user("whole please")])
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert delta_text(chunks) == "Echo: streamed please"
    assert finish_reasons(chunks) == ["stop"]
    assert len({c["id"] for c in chunks}) == 1
    assert_valid("openai.response", whole.to_dict())
    assert whole.choices[0].message.content == "Echo: whole please"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0
    assert len(stream_calls(fake, dialect)) == 2
    # The other dialect's routes were never used.
    assert not stream_calls(fake, "connect" if dialect == "legacy" else "legacy")


async def test_raw_stream_is_valid_sse(fake, dialect, proxy):
    status, headers, lines = await post_raw(
        proxy, {"model": "kimi", "stream": True, "messages": [user("raw bytes")]}
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    chunks = valid_chunks(data_payloads(lines))
    assert delta_text(chunks) == "Echo: raw bytes"
    assert finish_reasons(chunks) == ["stop"]


async def test_sync_sdk_in_a_thread(fake, dialect, proxy):
    def call() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key=TOKEN, max_retries=0) as client:
            whole = client.chat.completions.create(model="kimi", messages=[user("sync whole")])
            streamed = [
                c.to_dict()
                for c in client.chat.completions.create(
                    model="kimi", stream=True, messages=[user("sync stream")]
                )
            ]
        return whole.to_dict(), streamed

    whole, streamed = await asyncio.to_thread(call)
    assert_valid("openai.response", whole)
    for chunk in streamed:
        assert_valid("openai.chunk", chunk)
    assert whole["choices"][0]["message"]["content"] == "Echo: sync whole"
    assert delta_text(streamed) == "Echo: sync stream"


async def test_five_turns_by_history_use_one_conversation(fake, dialect, proxy):
    turns = [f"turn {n}" for n in range(1, 6)]
    messages: list[dict[str, Any]] = []
    async with sdk(proxy) as client:
        for turn in turns:
            messages.append(user(turn))
            result = await client.chat.completions.create(model="kimi", messages=messages)
            assert_valid("openai.response", result.to_dict())
            # Only the new turn reached Kimi, so the echo is of the new turn alone.
            assert result.choices[0].message.content == f"Echo: {turn}"
            messages.append({"role": "assistant", "content": result.choices[0].message.content})
    used = used_conversations(fake)
    assert len(used) == 1, [texts(c) for c in used]
    assert texts(used[0]) == turns
    assert len(stream_calls(fake, dialect)) == 5


async def test_edited_history_starts_a_new_conversation(fake, dialect, proxy):
    async with sdk(proxy) as client:
        first = await client.chat.completions.create(model="kimi", messages=[user("original")])
        assert first.choices[0].message.content == "Echo: original"
        edited = [
            user("original"),
            {"role": "assistant", "content": "an answer Kimi never gave"},
            user("next"),
        ]
        second = await client.chat.completions.create(model="kimi", messages=edited)
    used = used_conversations(fake)
    assert len(used) == 2
    assert texts(used[0]) == ["original"]
    # The whole (edited) history went to the new conversation, flattened into one prompt.
    (prompt,) = texts(used[1])
    assert "an answer Kimi never gave" in prompt
    assert prompt.rstrip().endswith("next")
    assert second.choices[0].message.content.endswith("next")


async def test_two_interleaved_chats_stay_apart(fake, dialect, proxy):
    histories: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    async with sdk(proxy) as client:
        for n in range(1, 4):
            for name, history in histories.items():
                history.append(user(f"{name}{n}"))
                result = await client.chat.completions.create(model="kimi", messages=history)
                assert result.choices[0].message.content == f"Echo: {name}{n}"
                history.append({"role": "assistant", "content": result.choices[0].message.content})
    used = sorted((texts(c) for c in used_conversations(fake)), key=lambda t: t[0])
    assert used == [["a1", "a2", "a3"], ["b1", "b2", "b3"]]


async def test_conversation_id_continues(fake, dialect, proxy):
    async with sdk(proxy) as client:
        first = await client.chat.completions.create(model="kimi", messages=[user("remember 42")])
        second = await client.chat.completions.create(
            model="kimi",
            messages=[user("ignored history"), user("what number?")],
            extra_body={"conversation_id": first.id},
        )
    assert_valid("openai.response", second.to_dict())
    assert second.id == first.id
    (conversation,) = used_conversations(fake)
    assert conversation.id == first.id
    assert texts(conversation)[0] == "remember 42"
    assert texts(conversation)[-1].endswith("what number?")


async def test_an_unknown_conversation_id_is_the_clients_404(fake, dialect, proxy):
    # Made up (or deleted in the browser): Kimi does not know it, so it is not Kimi failing.
    made_up = "d2fd3e7c-00aa-4bbb-8ccc-0123456789ab" if dialect == "connect" else "cq0madeup00"
    async with httpx.AsyncClient(timeout=30) as http:
        for stream in (False, True):
            resp = await http.post(
                proxy.url + "/v1/chat/completions",
                json={
                    "model": "kimi",
                    "messages": [user("continue")],
                    "conversation_id": made_up,
                    "stream": stream,
                },
                headers={"authorization": f"Bearer {TOKEN}"},
            )
            assert resp.status_code == 404, resp.text
            error = error_body(resp)
            assert error["type"] == "invalid_request_error"
            assert error["code"] in ("conversation_not_found", "not_found")
    assert not fake.record.live_conversations()  # nothing created on the way


@pytest.mark.parametrize("silent", [False, True])
async def test_search_cites_and_annotates(fake, dialect, proxy, silent):
    model = "kimi-search-silent" if silent else "kimi-search"
    async with sdk(proxy) as client:
        whole = await client.chat.completions.create(model=model, messages=[user("find it")])
        stream = await client.chat.completions.create(
            model=model, stream=True, messages=[user("find it")]
        )
        chunks = [c.to_dict() async for c in stream]
    assert_valid("openai.response", whole.to_dict())
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
    message = whole.to_dict()["choices"][0]["message"]
    annotations = message["annotations"]
    assert len(annotations) == 2
    urls = [a["url_citation"]["url"] for a in annotations]
    assert all(a["type"] == "url_citation" for a in annotations)
    assert all(u.startswith("https://example.com/search/") for u in urls)
    content = message["content"]
    assert "Echo: find it" in content
    if silent:
        assert "example.com" not in content
        assert content == "Echo: find it"
    else:
        for url in urls:
            assert f"]({url})" in content
    # Streamed and whole answers agree on the text.
    assert delta_text(chunks) == content
    calls = stream_calls(fake, dialect)
    if dialect == "legacy":
        assert all(c.json["use_search"] is True for c in calls)
    else:
        assert all(
            any(t.get("type") == "TOOL_TYPE_SEARCH" for t in c.json.get("tools") or [])
            for c in calls
        )


async def test_thinking_model_gives_reasoning(fake, dialect, proxy):
    model = "kimi-k1" if dialect == "legacy" else "kimi-k2-thinking"
    async with sdk(proxy) as client:
        stream = await client.chat.completions.create(
            model=model, stream=True, messages=[user("think hard")]
        )
        chunks = [c.to_dict() async for c in stream]
        whole = await client.chat.completions.create(model=model, messages=[user("think hard")])
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
    assert delta_text(chunks, "reasoning_content") == "Thinking about: think hard"
    assert delta_text(chunks) == "Echo: think hard"
    message = whole.to_dict()["choices"][0]["message"]
    assert_valid("openai.response", whole.to_dict())
    assert message["reasoning_content"] == "Thinking about: think hard"
    assert message["content"] == "Echo: think hard"


# --- conversation cleanup --------------------------------------------------------------------


async def test_ttl_zero_leaves_no_conversation(fake, dialect, tmp_path):
    async with running_proxy(
        fake.base_url,
        tmp_path,
        kimi_dialect=dialect,
        conversation_ttl=0,
        precreate_conversations=0,
    ) as proxy:
        async with sdk(proxy) as client:
            await client.chat.completions.create(model="kimi", messages=[user("short lived")])
            stream = await client.chat.completions.create(
                model="kimi", stream=True, messages=[user("short lived too")]
            )
            async for _ in stream:
                pass
        await wait_for(lambda: len(fake.record.deleted_conversations()) == 2)
        assert fake.record.live_conversations() == []


async def test_small_ttl_expires(fake, dialect, tmp_path):
    async with running_proxy(
        fake.base_url,
        tmp_path,
        kimi_dialect=dialect,
        conversation_ttl=1,
        precreate_conversations=0,
    ) as proxy:
        async with sdk(proxy) as client:
            await client.chat.completions.create(model="kimi", messages=[user("one second")])
        # Kept after the reply (the next turn may continue it) ...
        assert len(fake.record.live_conversations()) == 1
        # ... and deleted by the cleanup loop once idle for the TTL, while the proxy runs.
        await wait_for(lambda: fake.record.live_conversations() == [], timeout=5)
        assert len(fake.record.deleted_conversations()) == 1


async def test_pending_deletions_survive_a_crash(fake, dialect, tmp_path, monkeypatch):
    store_path = tmp_path / "shared.sqlite3"
    options = {"kimi_dialect": dialect, "conversation_ttl": 2, "precreate_conversations": 0}
    async with running_proxy(fake.base_url, tmp_path, store=store_path, **options) as proxy:
        keeper = proxy.addon.runtime.keeper

        async def crash(timeout: float = 10.0) -> None:
            # What a killed process does: stop working, delete nothing.
            keeper._loop_task.cancel()

        monkeypatch.setattr(keeper, "shutdown", crash)
        async with sdk(proxy) as client:
            result = await client.chat.completions.create(model="kimi", messages=[user("crash")])
    assert [c.id for c in fake.record.live_conversations()] == [result.id]
    store = Store(store_path)
    try:
        pending = await store.due_deletions(float("inf"))
    finally:
        await store.close()
    assert [p.conversation_id for p in pending] == [result.id]
    assert pending[0].due_at <= time.time() + 2.5

    # A new process on the same store deletes it when due, without any client request.
    async with running_proxy(fake.base_url, tmp_path, store=store_path, **options):
        await wait_for(lambda: fake.record.live_conversations() == [], timeout=6)
    (deleted,) = fake.record.deleted_conversations()
    assert deleted.id == result.id


async def test_spare_conversations_are_deleted_at_shutdown(fake, tmp_path):
    async with running_proxy(
        fake.base_url, tmp_path, kimi_dialect="legacy", precreate_conversations=1
    ) as proxy:
        async with sdk(proxy) as client:
            await client.chat.completions.create(model="kimi", messages=[user("make a spare")])
        # The spare is created in the background after the first conversation is used.
        await wait_for(lambda: len(fake.record.live_conversations()) == 2)
        spares = [c for c in fake.record.live_conversations() if not c.messages]
        assert len(spares) == 1
    assert fake.record.live_conversations() == []
    assert spares[0].deleted_at is not None
