"""A streamed reply leaves the relay in as few writes as its content allows: the status line and
headers go out with the first chunk, and the last events with the end of the chunked body
(`SseResponse`). Each write to mitmproxy is a loopback send and a pass through its HTTP/1
layers, so a header-only or terminator-only write is CPU spent per reply for nothing.

The relay's writes are recorded at aiohttp's writer; what the client reads is checked against
the schemas as always, for chat completions, Responses and Messages streams, and for a stream
that fails after its first chunk.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from aiohttp import http_writer

from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from tests.test_e2e_dialects import TOKEN, data_payloads, user, valid_chunks

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

SSE_HEADER = b"x-accel-buffering: no"


@contextmanager
def recorded_writes() -> Iterator[dict[int, list[bytes]]]:
    """Every aiohttp server write in this process, by writer (the fake Kimi's too)."""
    writes: dict[int, list[bytes]] = defaultdict(list)
    write, writelines = http_writer.StreamWriter._write, http_writer.StreamWriter._writelines

    def _write(self: Any, chunk: Any) -> None:
        writes[id(self)].append(bytes(chunk))
        write(self, chunk)

    def _writelines(self: Any, chunks: Any) -> None:
        writes[id(self)].append(b"".join(bytes(c) for c in chunks))
        writelines(self, chunks)

    http_writer.StreamWriter._write = _write  # type: ignore[method-assign]
    http_writer.StreamWriter._writelines = _writelines  # type: ignore[method-assign]
    try:
        yield writes
    finally:
        http_writer.StreamWriter._write = write  # type: ignore[method-assign]
        http_writer.StreamWriter._writelines = writelines  # type: ignore[method-assign]


def relay_reply(writes: dict[int, list[bytes]]) -> list[bytes]:
    """The writes of the one relay reply that was an SSE stream."""
    (reply,) = [
        w for w in writes.values() if w and w[0].startswith(b"HTTP/1.1 200") and SSE_HEADER in w[0]
    ]
    return reply


def assert_coalesced(reply: list[bytes], last_event: bytes) -> None:
    head, _, first_body = reply[0].partition(b"\r\n\r\n")
    assert b"text/event-stream" in head
    assert first_body.strip(), "the headers went out without the first chunk"
    # the last events, then the chunked body's end, in one write
    assert reply[-1].endswith(b"\n\n\r\n0\r\n\r\n"), reply[-1][-80:]
    assert last_event in reply[-1]
    assert all(w.strip() for w in reply)


async def post_stream(url: str, path: str, body: dict[str, Any]) -> str:
    headers = {"authorization": f"Bearer {TOKEN}", "x-api-key": TOKEN}
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", url + path, json=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        return (await resp.aread()).decode()


async def test_a_chat_stream_is_headers_with_the_first_chunk_and_done_with_the_end(tmp_path):
    body = {"model": "kimi", "stream": True, "messages": [user("few writes")]}
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
    ):
        with recorded_writes() as writes:
            text = await post_stream(proxy.url, "/v1/chat/completions", body)
    chunks = valid_chunks(data_payloads(text.split("\n")))
    assert "few writes" in "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert_coalesced(relay_reply(writes), b"data: [DONE]\n\n")


async def test_a_stream_failing_midway_ends_with_its_error_in_the_last_write(tmp_path):
    body = {"model": "kimi", "stream": True, "messages": [user("cut me off " * 8)]}
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
    ):
        fake.set_scenario(Scenario.of(Fault(kind="cut", match="completion", after_bytes=400)))
        with recorded_writes() as writes:
            text = await post_stream(proxy.url, "/v1/chat/completions", body)
    payloads = data_payloads(text.split("\n"))
    assert payloads[-1] == "[DONE]"
    assert_valid("openai.error", json.loads(payloads[-2]))
    reply = relay_reply(writes)
    assert_coalesced(reply, b"data: [DONE]\n\n")
    assert b'"error"' in reply[-1]


@pytest.mark.parametrize(
    ("path", "body", "schema", "last_event"),
    [
        (
            "/v1/responses",
            {"model": "kimi", "stream": True, "input": "few writes"},
            "openai.responses.event",
            b"event: response.completed",
        ),
        (
            "/v1/messages",
            {
                "model": "kimi",
                "stream": True,
                "max_tokens": 256,
                "messages": [user("few writes")],
            },
            "anthropic.event",
            b"event: message_stop",
        ),
    ],
)
async def test_responses_and_messages_streams_coalesce_the_same_way(
    tmp_path, path, body, schema, last_event
):
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
    ):
        with recorded_writes() as writes:
            text = await post_stream(proxy.url, path, body)
    events = [json.loads(p) for p in data_payloads(text.split("\n"))]
    assert events
    for event in events:
        assert_valid(schema, event)
    assert_coalesced(relay_reply(writes), last_event)
