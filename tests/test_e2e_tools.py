"""End to end for tool calling, structured output, stop and max_tokens: the official openai SDK →
mitmproxy with our addon → the fake Kimi playing a model (fixtures/fake_kimi/_model.py), in both
dialects. Every chunk and body is validated against schemas/."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from pathlib import Path

import httpx
import openai
import pydantic
import pytest

from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from tests.test_e2e_dialects import TOKEN, stream_calls, used_conversations, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

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


@pytest.fixture
async def proxy(fake, dialect, tmp_path):
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect=dialect) as p:
        yield p


def sdk(proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=TOKEN, max_retries=0)


async def raw_stream(proxy, body: dict) -> list[dict]:
    """The chunks of a streamed reply, each validated, exactly as they went over the wire."""
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json=body | {"stream": True},
            headers={"authorization": f"Bearer {TOKEN}"},
        ) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        payloads = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
    return chunks


async def completion(proxy, body: dict) -> dict:
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {TOKEN}"},
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert_valid("openai.response", body)
    return body


@pytest.mark.parametrize("stream", [False, True])
async def test_agent_loop_of_three_steps(fake, dialect, proxy, stream):
    """call → tool result → call → tool result → answer, all in one Kimi conversation."""
    messages: list[dict] = [{"role": "user", "content": "What is the weather? [[scenario:chain]]"}]
    async with sdk(proxy) as client:
        for step in range(3):
            if stream:
                chunks = [
                    c
                    async for c in await client.chat.completions.create(
                        model="kimi", messages=messages, tools=[WEATHER], stream=True
                    )
                ]
                for chunk in chunks:
                    assert_valid("openai.chunk", chunk.model_dump(exclude_unset=True))
                content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
                calls: dict[int, dict] = {}
                for c in chunks:
                    for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                        entry = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
                        entry["name"] += (d.function.name or "") if d.function else ""
                        entry["arguments"] += (d.function.arguments or "") if d.function else ""
                tool_calls = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in calls.values()
                ]
            else:
                result = await client.chat.completions.create(
                    model="kimi", messages=messages, tools=[WEATHER]
                )
                assert_valid("openai.response", result.model_dump(exclude_unset=True))
                message = result.choices[0].message
                content, finish = message.content or "", result.choices[0].finish_reason
                tool_calls = [tc.model_dump() for tc in message.tool_calls or []]
            if step < 2:
                assert finish == "tool_calls"
                assert content == f"Step {step + 1}.\n"
                assert [c["function"]["name"] for c in tool_calls] == ["get_weather"]
                assert json.loads(tool_calls[0]["function"]["arguments"]) == {"city": "example"}
                assert tool_calls[0]["id"].startswith("call_")
                messages.append(
                    {"role": "assistant", "content": content or None, "tool_calls": tool_calls}
                )
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": tool_calls[0]["id"],
                        "content": f"sunny {step}",
                    }
                )
            else:
                assert finish == "stop"
                assert content == "Done after 2 tool results; the last one said: sunny 1"
    # one Kimi conversation: each later turn posted only the new turns (results + instructions)
    (conversation,) = used_conversations(fake)
    prompts = [m.text for m in conversation.messages]
    assert len(prompts) == 3
    assert prompts[1].startswith('<tool_result name="get_weather" call_id="call_')
    assert "sunny 0" in prompts[1]
    assert "scenario" not in prompts[1]
    assert prompts[2].split("\n", 1)[0].startswith("<tool_result")
    assert "<tool_instructions>" in prompts[2]


async def test_the_repair_turn_is_invisible(fake, dialect, proxy):
    body = {
        "model": "kimi",
        "messages": [{"role": "user", "content": "weather? [[scenario:invalid_args]]"}],
        "tools": [WEATHER],
    }
    chunks = await raw_stream(proxy, body)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert not any(d.get("content") for d in deltas)
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "example"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    (conversation,) = used_conversations(fake)
    assert len(conversation.messages) == 2  # the question and the repair turn
    assert conversation.messages[1].text.startswith("Your previous reply cannot be used:")
    # non-streaming: the same call, folded
    folded = await completion(proxy, body)
    message = folded["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city": "example"}'


async def test_a_failed_required_call_is_a_502(fake, dialect, proxy):
    body = {
        "model": "kimi",
        "messages": [{"role": "user", "content": "weather? [[scenario:invalid_always]]"}],
        "tools": [WEATHER],
        "tool_choice": "required",
    }
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {TOKEN}"},
        )
    assert resp.status_code == 502
    error = resp.json()
    assert_valid("openai.error", error)
    assert error["error"]["code"] == "invalid_model_output"
    assert "city" in error["error"]["message"]
    # the conversation is not kept after an error
    await wait_for(lambda: all(c.deleted_at is not None for c in used_conversations(fake)))


class Person(pydantic.BaseModel):
    name: str
    age: int
    tags: list[str]


async def test_parse_with_pydantic(fake, dialect, proxy):
    async with sdk(proxy) as client:
        result = await client.chat.completions.parse(
            model="kimi",
            messages=[{"role": "user", "content": "Describe Ann. [[scenario:json_fenced]]"}],
            response_format=Person,
        )
    assert result.choices[0].message.parsed == Person(name="example", age=1, tags=["example"])
    (conversation,) = used_conversations(fake)
    assert "The object must match this JSON Schema:" in conversation.messages[0].text


async def test_stop_and_max_tokens_close_early_and_the_conversation_goes_on(fake, dialect, proxy):
    messages = [{"role": "user", "content": "one two three four five six seven"}]
    async with sdk(proxy) as client:
        stopped = await client.chat.completions.create(
            model="kimi", messages=messages, stop=["four"]
        )
        assert stopped.choices[0].message.content == "Echo: one two three "
        assert stopped.choices[0].finish_reason == "stop"
        limited = await client.chat.completions.create(
            model="kimi", messages=messages, max_tokens=3, stream=True
        )
        chunks = [c async for c in limited]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Echo: one tw"  # 12 ASCII characters = 3 tokens by the usage estimate
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        # the stopped answer's conversation continues with the next turn
        follow = await client.chat.completions.create(
            model="kimi",
            messages=[
                *messages,
                {"role": "assistant", "content": "Echo: one two three "},
                {"role": "user", "content": "and then?"},
            ],
        )
        assert follow.choices[0].message.content == "Echo: and then?"
    assert len(stream_calls(fake, dialect)) == 3


async def test_nulls_are_absent(fake, dialect, proxy):
    body = {
        "model": "kimi",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": None,
        "tool_choice": None,
        "user": None,
        "response_format": None,
        "parallel_tool_calls": None,
        "stop": None,
        "max_tokens": None,
    }
    result = await completion(proxy, body)
    assert result["choices"][0]["message"]["content"] == "Echo: hi"


# --- the README's examples ----------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


async def test_readme_examples_run(fake, dialect, proxy):
    section = README.read_text(encoding="utf-8").split("### Tools, structured output", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2
    source = "\n".join(blocks).replace("http://127.0.0.1:8000", proxy.url)
    source = source.replace("<your Kimi refresh_token>", TOKEN)
    # the fake plays a model that calls the tool twice, then answers (docs/testing.md)
    source = source.replace("in Paris?", "in Paris? [[scenario:chain]]")
    output = io.StringIO()

    def run() -> None:
        with contextlib.redirect_stdout(output):
            exec(compile(source, str(README), "exec"), {})

    await asyncio.to_thread(run)
    assert output.getvalue().splitlines() == [
        "Done after 2 tool results; the last one said: Sunny in example",
        "name='example' country='example' population=1",
    ]
