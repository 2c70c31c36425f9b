"""MessagesReply (the Messages face's `Reply`) and the route's own error paths, on a loopback
aiohttp server with scripted chat chunks: no Kimi, no mitmproxy."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from addon.serve._messages import MessagesReply, add_messages_routes, anthropic_credentials
from addon.upstream._chat import ChatStats
from tests.schema_check import assert_valid
from translator import RemoteProtocolError

EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
STATS = web.RequestKey("stats", ChatStats)


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "kimi",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


Script = Callable[[MessagesReply], Awaitable[web.StreamResponse]]


async def serve(script: Script, *, stream: bool) -> tuple[int, dict[str, str], str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        reply = MessagesReply(request if stream else None, model="claude-x", input_tokens=3)
        return await script(reply)

    app = web.Application()
    app.router.add_post("/", handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.post("/")
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.text()


def events_of(text: str) -> list[dict[str, Any]]:
    events = []
    for block in filter(None, text.split("\n\n")):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == "event: " + event["type"]
        assert_valid("anthropic.event", event)
        if event["type"] not in ("ping", "error"):
            EVENT.validate_python(event)
        events.append(event)
    return events


async def test_stream_with_ping_and_reset_before_start():
    async def script(reply: MessagesReply) -> web.StreamResponse:
        await reply.keepalive()  # nothing is committed before the first event
        await reply.send([])
        reply.reset()  # before the first event a failover starts afresh
        assert not reply.started
        await reply.send([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"})])
        assert reply.started
        reply.reset()  # too late to forget: no effect
        await reply.keepalive()
        return await reply.finish([chunk({}, "stop")])

    status, headers, text = await serve(script, stream=True)
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = events_of(text)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "ping",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2]["delta"]["text"] == "Hi"


async def test_non_stream_folds_one_message():
    async def script(reply: MessagesReply) -> web.StreamResponse:
        await reply.send([chunk({"role": "assistant", "content": ""}), chunk({"content": "lost"})])
        reply.reset()
        await reply.keepalive()
        await reply.send([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"})])
        assert not reply.started  # nothing reaches the client before the end
        return await reply.finish([chunk({}, "length")])

    status, _, text = await serve(script, stream=False)
    assert status == 200
    message = json.loads(text)
    assert_valid("anthropic.message", message)
    anthropic.types.Message.model_validate(message)
    assert message["content"] == [{"type": "text", "text": "Hi"}]
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"]["input_tokens"] == 3


@pytest.mark.parametrize("stream", [True, False])
async def test_failure_before_the_first_event_is_an_http_error(stream):
    async def script(reply: MessagesReply) -> web.StreamResponse:
        err = RemoteProtocolError("every account is busy", status=503)
        err.retry_after = 2.5
        return await reply.fail(err)

    status, headers, text = await serve(script, stream=stream)
    assert status == 529
    assert headers["retry-after"] == "3"
    body = json.loads(text)
    assert_valid("anthropic.error", body)
    assert body["error"] == {"type": "overloaded_error", "message": "every account is busy"}


async def test_failure_mid_stream_is_an_error_event():
    async def script(reply: MessagesReply) -> web.StreamResponse:
        await reply.send([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"})])
        return await reply.fail(RemoteProtocolError("Kimi broke the connection"))

    status, _, text = await serve(script, stream=True)
    assert status == 200
    events = events_of(text)
    assert events[-1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "Kimi broke the connection"},
    }


class BrokenChat:
    async def complete(self, *args: Any) -> web.StreamResponse:
        raise RuntimeError("a bug")


class OpenPool:
    async def resolve(self, credentials: str) -> list[str]:
        return ["account"]


async def test_a_bug_in_the_pipeline_is_an_anthropic_500(caplog):
    @web.middleware
    async def stats(request: web.Request, handler: Any) -> web.StreamResponse:
        request[STATS] = ChatStats()
        return await handler(request)

    app = web.Application(middlewares=[stats])
    add_messages_routes(app, chat=BrokenChat(), pool=OpenPool(), stats_key=STATS)  # type: ignore[arg-type]
    body = {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.post("/v1/messages", json=body, headers={"x-api-key": "k"})
        error = await resp.json()
        counted = await client.post("/messages/count_tokens", json=body)
        count = await counted.json()
    assert resp.status == 500
    assert_valid("anthropic.error", error)
    assert error["error"]["type"] == "api_error"
    assert "a bug" in caplog.text
    assert counted.status == 200
    assert_valid("anthropic.count_tokens", count)
    assert count["input_tokens"] >= 1


def test_credentials_prefer_x_api_key():
    from aiohttp.test_utils import make_mocked_request

    def creds(**headers: str) -> str:
        return anthropic_credentials(make_mocked_request("POST", "/", headers=headers))

    assert creds(**{"x-api-key": " k1 ", "authorization": "Bearer k2"}) == "k1"
    assert creds(authorization="Bearer k2") == "k2"
    assert creds(authorization="Basic k2") == ""
    assert creds() == ""
