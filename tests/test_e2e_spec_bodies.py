"""A sample of every endpoint's bodies, as they went over the wire, against the official spec file.

Through a real mitmproxy with our addon and the fake Kimi (both dialects), each OpenAI body, chunk,
event and error is checked with tests/openapi_check.py against schemas/openai/openapi-subset.json
itself (refs resolved, `nullable` honoured, and no null where the spec does not type one). The
Anthropic bodies are checked against schemas/anthropic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.openapi_check import assert_openapi_valid, subset
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from tests.test_e2e_dialects import TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

AUTH = {"authorization": f"Bearer {TOKEN}"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

#: chat requests that together make every kind of chunk: text, usage, thinking, citations, tools
CHAT_SAMPLES = [
    {"model": "kimi", "messages": [{"role": "user", "content": "Say hello."}]},
    {
        "model": "kimi",
        "messages": [{"role": "user", "content": "Count to three."}],
        "stream_options": {"include_usage": True},
    },
    {
        "model": "kimi-k1",
        "reasoning_effort": "high",
        "messages": [{"role": "user", "content": "Think about the sky."}],
    },
    {"model": "kimi-search", "messages": [{"role": "user", "content": "News about the moon"}]},
    {
        "model": "kimi",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER],
        "tool_choice": "required",
    },
]


@pytest.fixture
async def proxy(fake, dialect, tmp_path):
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect=dialect) as p:
        yield p


def _sse(text: str) -> Iterator[tuple[str | None, str]]:
    """(event name, data) of every SSE event in `text`."""
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            yield name, "\n".join(data)


def _event_components() -> dict[str, str]:
    """Responses stream event type → the spec component that describes it."""
    out: dict[str, str] = {}
    for name, schema in subset()["components"]["schemas"].items():
        kind = schema.get("properties", {}).get("type", {})
        if name.endswith("Event") and kind.get("enum") and len(kind["enum"]) == 1:
            out[kind["enum"][0]] = name
    return out


async def test_chat_bodies_follow_the_spec(fake, dialect, proxy):
    seen: set[str] = set()
    async with httpx.AsyncClient(timeout=60, headers=AUTH) as http:
        for body in CHAT_SAMPLES:
            url = proxy.url + "/v1/chat/completions"
            whole = await http.post(url, json=body)
            assert whole.status_code == 200, whole.text
            completion = whole.json()
            assert_openapi_valid("CreateChatCompletionResponse", completion)
            seen.update(k for k, v in completion["choices"][0]["message"].items() if v)
            streamed = await http.post(url, json={**body, "stream": True})
            assert streamed.status_code == 200, streamed.text
            events = [data for _, data in _sse(streamed.text)]
            assert events[-1] == "[DONE]"
            for data in events[:-1]:
                chunk = json.loads(data)
                assert_openapi_valid("CreateChatCompletionStreamResponse", chunk)
                assert "system_fingerprint" not in chunk
                if chunk.get("usage"):
                    seen.add("usage")
    # the sample covered what it is meant to cover
    assert {"content", "annotations", "tool_calls", "usage"} <= seen, seen


async def test_models_and_errors_follow_the_spec(fake, dialect, proxy):
    async with httpx.AsyncClient(timeout=60) as http:
        models = await http.get(proxy.url + "/v1/models", headers=AUTH)
        assert models.status_code == 200
        assert_openapi_valid("ListModelsResponse", models.json())
        first = models.json()["data"][0]["id"]
        one = await http.get(proxy.url + f"/v1/models/{first}", headers=AUTH)
        assert one.status_code == 200
        assert_openapi_valid("Model", one.json())
        errors = [
            await http.get(proxy.url + "/v1/nothing-here", headers=AUTH),
            await http.post(proxy.url + "/v1/chat/completions", json=CHAT_SAMPLES[0]),  # 401
            await http.post(
                proxy.url + "/v1/chat/completions",
                json={"model": "kimi", "messages": []},
                headers=AUTH,
            ),
            await http.post(proxy.url + "/v1/chat/completions", content=b"{", headers=AUTH),
            await http.post(proxy.url + "/v1/responses", json={"model": "kimi"}, headers=AUTH),
        ]
    assert [e.status_code for e in errors] == [404, 401, 400, 400, 400]
    for error in errors:
        assert_openapi_valid("ErrorResponse", error.json())


async def test_responses_bodies_follow_the_spec(fake, dialect, proxy):
    components = _event_components()
    request = {"model": "kimi", "input": "Say hello.", "instructions": "Be brief."}
    tools = {
        "model": "kimi",
        "input": "What is the weather in Paris?",
        "tools": [{"type": "function", **WEATHER["function"]}],
        "tool_choice": "required",
    }
    thinking = {"model": "kimi-k1", "input": "Think.", "reasoning": {"effort": "high"}}
    kinds: set[str] = set()
    async with httpx.AsyncClient(timeout=60, headers=AUTH) as http:
        for body in (request, tools, thinking):
            whole = await http.post(proxy.url + "/v1/responses", json=body)
            assert whole.status_code == 200, whole.text
            assert_openapi_valid("Response", whole.json())
            again = await http.get(proxy.url + f"/v1/responses/{whole.json()['id']}")
            assert again.status_code == 200, again.text
            assert_openapi_valid("Response", again.json())
            streamed = await http.post(proxy.url + "/v1/responses", json={**body, "stream": True})
            assert streamed.status_code == 200, streamed.text
            for name, data in _sse(streamed.text):
                event = json.loads(data)
                assert name == event["type"]
                assert_openapi_valid(components[event["type"]], event)
                kinds.add(event["type"])
    assert {
        "response.created",
        "response.output_text.delta",
        "response.function_call_arguments.done",
        "response.completed",
    } <= kinds, kinds


async def test_anthropic_bodies_follow_their_schemas(fake, dialect, proxy):
    headers = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01"}
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    async with httpx.AsyncClient(timeout=60, headers=headers) as http:
        whole = await http.post(proxy.url + "/v1/messages", json=body)
        assert whole.status_code == 200, whole.text
        assert_valid("anthropic.message", whole.json())
        streamed = await http.post(proxy.url + "/v1/messages", json={**body, "stream": True})
        assert streamed.status_code == 200, streamed.text
        events = [json.loads(data) for _, data in _sse(streamed.text)]
        assert events
        for event in events:
            assert_valid("anthropic.event", event)
        bad = await http.post(proxy.url + "/v1/messages", json={"model": "x"})
        assert bad.status_code == 400
        assert_valid("anthropic.error", bad.json())
