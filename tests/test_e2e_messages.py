"""End to end for the Anthropic Messages face, both dialects: the anthropic SDK (and raw httpx)
→ a real mitmproxy with our addon → the fake Kimi.

Every body and event is validated against schemas/anthropic; the SDK's own types parse them too
(the SDK itself does, and the raw events go through `RawMessageStreamEvent`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pydantic
import pytest

from fixtures.fake_kimi import Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from tests.test_e2e_dialects import TOKEN, stream_calls, used_conversations, wait_for
from tests.test_e2e_files import PDF, PNG
from translator import thinking_signature

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
MODEL = "claude-opus-4-8"  # Claude Code's default (agent-clients.md)


def client(proxy, key: str = TOKEN, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=proxy.url, api_key=key, max_retries=0, **kw)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def valid_message(message: anthropic.types.Message) -> dict[str, Any]:
    body = message.to_dict()
    assert_valid("anthropic.message", body)
    return body


async def post_raw(proxy, path: str, body: Any, headers: dict[str, str] | None = None):
    """(status, headers, body text) of one POST with httpx."""
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(
            proxy.url + path,
            content=json.dumps(body).encode(),
            headers={"x-api-key": TOKEN, "anthropic-version": "2023-06-01", **(headers or {})},
        )
        return resp.status_code, resp.headers, resp.text


def sse_events(text: str) -> list[dict[str, Any]]:
    """Parse an SSE body; every event's name equals its type, and each event is valid."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        if block.startswith(":"):
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        event = json.loads(lines[1][6:])
        assert event["type"] == lines[0][7:]
        assert_valid("anthropic.event", event)
        if event["type"] not in ("ping", "error"):
            EVENT.validate_python(event)
        events.append(event)
    return events


def error_of(status_and_body: tuple[int, Any, str]) -> tuple[int, dict[str, Any]]:
    status, _, text = status_and_body
    body = json.loads(text)
    assert_valid("anthropic.error", body)
    anthropic.types.ErrorResponse.model_validate(body)
    return status, body["error"]


@pytest.fixture
async def proxy(fake, dialect, tmp_path):
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect=dialect) as p:
        yield p


# --- text -------------------------------------------------------------------------------------


async def test_create_and_stream_text(fake, dialect, proxy):
    async with client(proxy) as sdk:
        message = await sdk.messages.create(
            model=MODEL, max_tokens=256, messages=[user("hello there")]
        )
        async with sdk.messages.stream(
            model=MODEL, max_tokens=256, messages=[user("streamed please")]
        ) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    body = valid_message(message)
    assert body["model"] == MODEL
    assert body["content"] == [{"type": "text", "text": "Echo: hello there"}]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["input_tokens"] > 0
    assert body["usage"]["output_tokens"] > 0
    assert "".join(texts) == "Echo: streamed please"
    valid_message(final)
    assert final.content[0].text == "Echo: streamed please"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert len(stream_calls(fake, dialect)) == 2


async def test_raw_stream_events_and_system(fake, dialect, proxy):
    status, headers, text = await post_raw(
        proxy,
        "/v1/messages?beta=true",
        {
            "model": MODEL,
            "max_tokens": 64,
            "stream": True,
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [user([{"type": "text", "text": "raw events"}])],
            "metadata": {"user_id": "someone"},
            "output_config": {"effort": "high"},
        },
        {"anthropic-beta": "interleaved-thinking-2025-05-14"},
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = sse_events(text)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    (conversation,) = used_conversations(fake)
    assert "Be brief." in conversation.messages[0].text


# --- thinking, images, documents --------------------------------------------------------------


async def test_thinking(fake, dialect, proxy):
    async with client(proxy) as sdk:
        message = await sdk.messages.create(
            model=MODEL,
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[user("think first")],
        )
        async with sdk.messages.stream(
            model=MODEL,
            max_tokens=2048,
            thinking={"type": "adaptive"},  # what Claude Code sends
            messages=[user("think streamed")],
        ) as stream:
            thoughts = [e.thinking async for e in stream if e.type == "thinking"]
            final = await stream.get_final_message()
    body = valid_message(message)
    thinking, text = body["content"]
    assert thinking["type"] == "thinking"
    assert thinking["thinking"].startswith("Thinking about:")
    assert thinking["signature"] == thinking_signature(thinking["thinking"])
    assert text == {"type": "text", "text": "Echo: think first"}
    assert "".join(thoughts) == final.content[0].thinking  # type: ignore[union-attr]
    assert final.content[1].text == "Echo: think streamed"  # type: ignore[union-attr]
    # The thinking block can be sent back as history; it is dropped, the answer is not.
    async with client(proxy) as sdk:
        again = await sdk.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=[user("think first"), message.to_param(), user("and now?")],
        )
    assert again.content[0].text.endswith("and now?")  # type: ignore[union-attr]


async def test_image_and_document(fake, dialect, proxy):
    png = base64.b64encode(PNG).decode()
    pdf = base64.b64encode(PDF).decode()
    async with client(proxy) as sdk:
        message = await sdk.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=[
                user(
                    [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": png},
                        },
                        {
                            "type": "document",
                            "title": "spec",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": pdf,
                            },
                        },
                        {"type": "text", "text": "what is this?"},
                    ]
                )
            ],
        )
    body = valid_message(message)
    answer = body["content"][0]["text"]
    assert "what is this?" in answer
    assert "spec.pdf" in answer
    assert f"({len(PNG)} bytes)" in answer
    assert len(fake.record.uploads) >= 2


# --- tools ------------------------------------------------------------------------------------

READ_TOOL = {
    "name": "Read",
    "description": "Read a file",
    "input_schema": {
        "type": "object",
        "properties": {"file_path": {"type": "string"}},
        "required": ["file_path"],
    },
}


async def test_tool_result_history_reaches_kimi(fake, dialect, proxy):
    messages = [
        user("read a.txt"),
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "Read",
                    "input": {"file_path": "a.txt"},
                }
            ],
        },
        user(
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "1\tthe secret is 42\n",
                },
                {"type": "text", "text": "what does it say?"},
            ]
        ),
    ]
    async with client(proxy) as sdk:
        message = await sdk.messages.create(
            model=MODEL, max_tokens=64, tools=[READ_TOOL], messages=messages
        )
    valid_message(message)
    (conversation,) = used_conversations(fake)
    prompt = conversation.messages[-1].text
    assert "the secret is 42" in prompt
    # the history comes first; the tool instructions (docs/tools.md) follow it
    history = prompt.split("\n\n<tool_instructions>\n", 1)[0]
    assert history.rstrip().endswith("what does it say?")


# --- errors, auth, count_tokens, models -------------------------------------------------------


async def test_errors_in_anthropic_shape(fake, dialect, proxy):
    status, error = error_of(
        await post_raw(
            proxy,
            "/v1/messages",
            {"model": MODEL, "max_tokens": 8, "messages": [user("x")]},
            {"x-api-key": ""},
        )
    )
    assert (status, error["type"]) == (401, "authentication_error")
    assert "x-api-key" in error["message"]  # the header an Anthropic client sends
    async with client(proxy, key="sk-unknown") as sdk:
        with pytest.raises(anthropic.AuthenticationError):
            await sdk.messages.create(model=MODEL, max_tokens=8, messages=[user("x")])
    status, error = error_of(
        await post_raw(proxy, "/v1/messages", {"model": MODEL, "messages": [user("x")]})
    )
    assert (status, error["type"]) == (400, "invalid_request_error")
    assert error["message"].startswith("max_tokens:")
    status, error = error_of(
        await post_raw(
            proxy,
            "/v1/messages",
            {
                "model": MODEL,
                "max_tokens": 8,
                "messages": [
                    user(
                        [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "%%",
                                },
                            }
                        ]
                    )
                ],
            },
        )
    )
    assert (status, error["type"]) == (400, "invalid_request_error")
    assert error["message"].startswith("messages.0.content.0.source.data:")
    status, error = error_of(await post_raw(proxy, "/v1/messages", "not an object"))
    assert status == 400
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            proxy.url + "/v1/messages", content=b"{", headers={"x-api-key": TOKEN}
        )
    assert resp.status_code == 400
    assert_valid("anthropic.error", resp.json())
    assert not stream_calls(fake, dialect)


async def test_unknown_routes_under_messages_answer_in_anthropic_shape(fake, dialect, proxy):
    # Routes of the Messages API this proxy does not serve, and a wrong method on one it does.
    async with httpx.AsyncClient() as http:
        for method, path in (
            ("POST", "/v1/messages/batches"),
            ("GET", "/v1/messages/batches/msgbatch_01"),
            ("GET", "/v1/messages"),
            ("POST", "/messages/unknown"),
        ):
            resp = await http.request(method, proxy.url + path, headers={"x-api-key": TOKEN})
            status, error = error_of((resp.status_code, None, resp.text))
            assert (status, error["type"]) == (404, "not_found_error"), path
            assert path in error["message"]
        # outside the Messages API the OpenAI shape stays
        resp = await http.get(proxy.url + "/v1/messagesx", headers={"x-api-key": TOKEN})
        assert resp.status_code == 404
        assert_valid("openai.error", resp.json())
        assert resp.json()["error"]["code"] == "unknown_url"
    assert not stream_calls(fake, dialect)


async def test_bearer_auth_and_count_tokens(fake, dialect, proxy):
    async with anthropic.AsyncAnthropic(base_url=proxy.url, auth_token=TOKEN, max_retries=0) as sdk:
        message = await sdk.messages.create(model=MODEL, max_tokens=8, messages=[user("bearer")])
        assert message.content[0].text == "Echo: bearer"  # type: ignore[union-attr]
        count = await sdk.messages.count_tokens(model=MODEL, messages=[user("bearer")])
    assert_valid("anthropic.count_tokens", count.to_dict())
    assert count.input_tokens == message.usage.input_tokens > 0
    status, error = error_of(
        await post_raw(proxy, "/v1/messages/count_tokens", {"model": MODEL, "messages": []})
    )
    assert (status, error["type"]) == (400, "invalid_request_error")
    status, error = error_of(
        await post_raw(
            proxy,
            "/v1/messages/count_tokens",
            {"model": MODEL, "messages": [user("x")]},
            {"x-api-key": ""},
        )
    )
    assert (status, error["type"]) == (401, "authentication_error")


async def test_overload_is_529_and_rate_limit_has_retry_after(fake, dialect, tmp_path):
    route = "completion" if dialect == "legacy" else "chat"
    async with running_proxy(
        fake.base_url, tmp_path, kimi_dialect=dialect, precreate_conversations=0
    ) as proxy:
        fake.set_scenario(Scenario.of(Fault(kind="empty_done", match=route)))
        async with client(proxy) as sdk:
            with pytest.raises(anthropic.APIStatusError) as info:
                await sdk.messages.create(model=MODEL, max_tokens=8, messages=[user("x")])
        assert info.value.status_code == 529
        assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        fake.set_scenario(Scenario.of(Fault(kind="http_status", match=route, status=429)))
        status, headers, text = await post_raw(
            proxy, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": [user("y")]}
        )
        assert status == 429
        assert json.loads(text)["error"]["type"] == "rate_limit_error"
        # The account now cools down: the next request is told when to come back.
        status, headers, text = await post_raw(
            proxy, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": [user("z")]}
        )
        assert status == 429
        assert json.loads(text)["error"]["type"] == "rate_limit_error"
        assert int(headers["retry-after"]) >= 1
        await wait_for(lambda: fake.record.live_conversations() == [])


async def test_ping_while_kimi_is_silent_then_an_error_event(fake, dialect, tmp_path):
    route = "completion" if dialect == "legacy" else "chat"
    fake.set_scenario(Scenario.of(Fault(kind="stall", match=route, after_bytes=800, seconds=2.5)))
    async with running_proxy(
        fake.base_url,
        tmp_path,
        kimi_dialect=dialect,
        keepalive_interval=1,
        precreate_conversations=0,
    ) as proxy:
        status, _, text = await post_raw(
            proxy,
            "/v1/messages",
            {
                "model": MODEL,
                "max_tokens": 512,
                "stream": True,
                "messages": [user("a rather long question " * 8)],
            },
        )
    assert status == 200
    events = sse_events(text)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start"
    assert "ping" in kinds
    assert kinds[-1] == "error"
    assert events[-1]["error"]["type"] == "api_error"


async def test_models_by_id_and_warm_up(proxy):
    async with httpx.AsyncClient() as http:
        found = await http.get(proxy.url + "/v1/models/kimi")
        missing = await http.get(proxy.url + "/v1/models/gpt-nothing")
        listing = await http.get(proxy.url + "/v1/models")
        head = await http.head(proxy.url + "/")
    assert found.status_code == 200
    assert found.json()["id"] == "kimi"
    assert found.json()["object"] == "model"
    assert_valid("openai.model", found.json())
    assert missing.status_code == 404
    assert_valid("openai.error", missing.json())
    assert missing.json()["error"]["code"] == "model_not_found"
    assert_valid("openai.models", listing.json())
    assert head.status_code == 200
    # With a token, the listing may be Kimi's own catalog (Connect): every id in it resolves.
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(headers=auth) as http:
        listed = (await http.get(proxy.url + "/v1/models")).json()["data"]
        for entry in listed:
            one = await http.get(proxy.url + "/v1/models/" + entry["id"])
            assert one.status_code == 200
            # `created` is the time of each answer; everything else is the listing's.
            assert {**one.json(), "created": 0} == {**entry, "created": 0}


# --- the README's example ---------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


async def test_readme_example_runs(fake, dialect, proxy):
    section = README.read_text(encoding="utf-8").split("## Anthropic Messages API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    source = code.group(1).replace("http://127.0.0.1:8000", proxy.url)
    source = source.replace("<your Kimi refresh_token>", TOKEN)
    output = io.StringIO()

    def run() -> None:
        with contextlib.redirect_stdout(output):
            exec(compile(source, str(README), "exec"), {})

    await asyncio.to_thread(run)
    printed = output.getvalue()
    assert "user:What is the capital of France?" in printed
    assert "Echo: Why is the sky blue?" in printed


async def test_tool_use_round_trip(fake, dialect, proxy):
    ask = [user("read the file notes.txt")]
    async with client(proxy) as sdk:
        first = await sdk.messages.create(
            model=MODEL, max_tokens=256, tools=[READ_TOOL], messages=ask
        )
        async with sdk.messages.stream(
            model=MODEL, max_tokens=256, tools=[READ_TOOL], messages=ask
        ) as stream:
            streamed = await stream.get_final_message()
        valid_message(first)
        valid_message(streamed)
        for message in (first, streamed):
            assert message.stop_reason == "tool_use"
            (call,) = [b for b in message.content if b.type == "tool_use"]
            assert call.name == "Read"
            assert call.input == {"file_path": "notes.txt"}
        (call,) = [b for b in first.content if b.type == "tool_use"]
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "     1\tpelican\n"}
        second = await sdk.messages.create(
            model=MODEL,
            max_tokens=256,
            tools=[READ_TOOL],
            messages=[*ask, first.to_param(), user([result])],
        )
    valid_message(second)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "The file says: pelican"  # type: ignore[union-attr]
    # The round trip continued the Kimi conversation of the call (the streamed twin has its own).
    assert sorted(len(c.messages) for c in used_conversations(fake)) == [1, 2]
    # The raw stream of a call: a tool_use block, its input in input_json_delta pieces.
    status, _, text = await post_raw(
        proxy,
        "/v1/messages",
        {"model": MODEL, "max_tokens": 256, "stream": True, "tools": [READ_TOOL], "messages": ask},
    )
    assert status == 200
    events = sse_events(text)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts[-1]["type"] == "tool_use"
    pieces = "".join(
        e["delta"]["partial_json"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(pieces) == {"file_path": "notes.txt"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


async def test_stop_sequences(fake, dialect, proxy):
    ask = [user("say alpha HALT beta")]
    async with client(proxy) as sdk:
        message = await sdk.messages.create(
            model=MODEL, max_tokens=256, stop_sequences=["NEVER", "HALT"], messages=ask
        )
        async with sdk.messages.stream(
            model=MODEL, max_tokens=256, stop_sequences=["HALT"], messages=ask
        ) as stream:
            streamed = await stream.get_final_message()
    for answer in (message, streamed):
        valid_message(answer)
        assert answer.content[0].text == "Echo: say alpha "  # type: ignore[union-attr]
        assert answer.stop_reason == "stop_sequence"
        assert answer.stop_sequence == "HALT"
