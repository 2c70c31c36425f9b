"""End to end with agent frameworks through mitmproxy against the fake Kimi, both dialects:
LangChain (`bind_tools`, `with_structured_output` with function_calling / json_schema / json_mode)
and LiteLLM with tools. The frameworks parse the bodies themselves, so each test also sends
one raw request of the same kind and validates every chunk or body against schemas/
(tests/test_e2e_tools.py validates the openai SDK's)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pydantic
import pytest

from tests.proxy_harness import running_proxy
from tests.test_e2e_dialects import TOKEN, used_conversations
from tests.test_e2e_tools import WEATHER, completion, raw_stream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
async def proxy(fake, dialect, tmp_path):
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect=dialect) as p:
        yield p


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The frameworks' HTTP client, closed by the test: a client they make themselves is
    cached for the process (LangChain and LiteLLM both keep them), so its keep-alive sockets
    would outlive the proxy and be reported unclosed whenever the garbage collector runs."""
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def chat_model(proxy, http):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model="kimi",
        base_url=proxy.url + "/v1",
        api_key=TOKEN,
        max_retries=0,
        timeout=30,
        http_async_client=http,
    )


class Person(pydantic.BaseModel):
    """A person."""

    name: str
    age: int


class Answer(pydantic.BaseModel):
    answer: str


async def test_langchain_bind_tools(fake, dialect, proxy, http):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather of a city."""
        return f"sunny in {city}"

    model = chat_model(proxy, http).bind_tools([get_weather])
    question = HumanMessage("What is the weather? [[scenario:text_then_call]]")
    first = await model.ainvoke([question])
    assert first.content == "Let me check that for you.\n"
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("get_weather", {"city": "example"})
    ]
    result = ToolMessage(
        get_weather.invoke(first.tool_calls[0]["args"]), tool_call_id=first.tool_calls[0]["id"]
    )
    chunks = [c async for c in model.astream([question, first, result])]
    text = "".join(str(c.content) for c in chunks)
    # the scenario answers the same way after a result: text, then a call in tool_call_chunks
    assert text == "Let me check that for you.\n"
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.tool_calls[0]["name"] == "get_weather"
    (conversation,) = used_conversations(fake)  # the second turn continued the conversation
    assert len(conversation.messages) == 2
    assert conversation.messages[1].text.startswith('<tool_result name="get_weather"')
    validated = await raw_stream(
        proxy,
        {
            "model": "kimi",
            "messages": [{"role": "user", "content": "x [[scenario:two_calls]]"}],
            "tools": [WEATHER],
        },
    )
    assert validated[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("method", "schema", "expected"),
    [
        ("function_calling", Person, Person(name="example", age=1)),
        ("json_schema", Person, Person(name="example", age=1)),
        ("json_mode", Answer, None),
    ],
)
async def test_langchain_with_structured_output(
    fake, dialect, proxy, http, method, schema, expected
):
    from langchain_core.messages import HumanMessage

    model = chat_model(proxy, http).with_structured_output(schema, method=method)
    result = await model.ainvoke([HumanMessage("Tell me about Ann, as JSON.")])
    if expected is None:
        assert isinstance(result, Answer)
        assert "Tell me about Ann, as JSON." in result.answer
    else:
        assert result == expected
    (conversation,) = used_conversations(fake)
    prompt = conversation.messages[0].text
    assert ("<tool_instructions>" in prompt) == (method == "function_calling")
    assert ("<output_format>" in prompt) == (method != "function_calling")
    body = await completion(
        proxy,
        {
            "model": "kimi",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"},
        },
    )
    assert body["choices"][0]["message"]["content"] == '{"answer": "x"}'


async def test_litellm_with_tools(fake, dialect, proxy, http, monkeypatch):
    # No network: the model cost map is read from the package, never fetched.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("LITELLM_TELEMETRY", "False")
    import litellm
    import openai

    response = await litellm.acompletion(
        model="openai/kimi",
        api_base=proxy.url + "/v1",
        api_key=TOKEN,
        client=openai.AsyncOpenAI(
            base_url=proxy.url + "/v1", api_key=TOKEN, max_retries=0, http_client=http
        ),
        messages=[{"role": "user", "content": "weather? [[scenario:kimi_native]]"}],
        tools=[WEATHER],
        num_retries=0,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "example"}'
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
