"""Input that must neither stall nor bloat the proxy: huge histories, deep nesting, compressed
bodies that inflate without bound, oversized headers. Everything answers fast, in OpenAI's
error shape, and /ping keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import resource
import time
import zlib

import httpx
import pytest

from addon.upstream._conversations import exchange_key, prefix_keys
from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from translator import Message

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

AUTH = {"authorization": "Bearer refresh-big"}


def long_history(n: int) -> list[dict[str, str]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x" * 40}
        for i in range(n)
    ]


def test_prefix_keys_are_the_keys_of_every_prefix():
    messages = [Message(role="user" if i % 2 == 0 else "assistant", text=f"t{i}") for i in range(7)]
    keys = prefix_keys(messages)
    assert keys == [exchange_key(messages[:n]) for n in range(1, 8)]
    assert len(set(keys)) == 7
    # Whitespace at the ends of a turn does not change the key; the text does.
    padded = [Message(role=m.role, text=f"  {m.text}\n") for m in messages]
    assert prefix_keys(padded) == keys
    assert exchange_key([Message(role="user", text="other")]) != keys[0]


async def test_ten_thousand_messages_answer_fast_and_ping_keeps_answering(tmp_path):
    body = {"model": "kimi", "messages": long_history(10_000)}
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=120) as http,
    ):
        warm = await http.post(
            "/v1/chat/completions",
            json={"model": "kimi", "messages": [{"role": "user", "content": "hi"}]},
            headers=AUTH,
        )
        assert warm.status_code == 200
        started = time.monotonic()
        big = asyncio.create_task(http.post("/v1/chat/completions", json=body, headers=AUTH))
        await asyncio.sleep(0.05)
        ping_started = time.monotonic()
        ping = await http.get("/ping")
        ping_time = time.monotonic() - ping_started
        answer = await big
        elapsed = time.monotonic() - started
        assert ping.status_code == 200
        assert answer.status_code == 200, answer.text
        assert_valid("openai.response", answer.json())
        # Hashing every prefix anew took 49 s here (quadratic, on the event loop); one running
        # hash takes about 0.3 s for the whole request, fake Kimi and client included.
        assert elapsed < 2.0, elapsed
        assert ping_time < 1.0, ping_time


def gzip_bomb(inflated_mb: int) -> bytes:
    """A gzip JSON chat request whose one message inflates to `inflated_mb` MiB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(b'{"model":"kimi","messages":[{"role":"user","content":"')]
    block = b"a" * (1 << 20)
    parts += [packer.compress(block) for _ in range(inflated_mb)]
    parts += [packer.compress(b'"}]}'), packer.flush()]
    return b"".join(parts)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body
    return body


async def test_compressed_and_strange_bodies(tmp_path):
    chat = json.dumps(
        {"model": "kimi", "messages": [{"role": "user", "content": "squeezed hello"}]}
    ).encode()
    async with (
        FakeKimi() as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", max_request_bytes=4 * 1024 * 1024
        ) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=60) as http,
    ):

        async def post(body: bytes, **headers: str) -> httpx.Response:
            return await http.post(
                "/v1/chat/completions",
                content=body,
                headers={**AUTH, "content-type": "application/json", **headers},
            )

        raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        for body, encoding in (
            (gzip.compress(chat), "gzip"),
            (zlib.compress(chat), "deflate"),
            (raw_deflate.compress(chat) + raw_deflate.flush(), "deflate"),
        ):
            answer = await post(body, **{"content-encoding": encoding})
            assert answer.status_code == 200, (encoding, answer.text)
            assert "squeezed hello" in answer.json()["choices"][0]["message"]["content"]

        # A gzip bomb: 300 KB that inflates to 300 MB. Refused once 4 MiB are inflated; the
        # process never holds the rest (aiohttp's own inflating took 1 GB for a 600 MB bomb).
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        bomb = gzip_bomb(300)
        answer = await post(bomb, **{"content-encoding": "gzip"})
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        body = assert_openai_error(answer, 413, "request_too_large")
        assert "max_request_bytes" in body["error"]["message"]
        assert grown_mb < 100, grown_mb
        # Too large before decompression, by Content-Length.
        assert_openai_error(await post(b" " * (4 * 1024 * 1024 + 1)), 413, "request_too_large")
        # Broken, truncated and unknown encodings.
        assert_openai_error(
            await post(b"not gzip at all", **{"content-encoding": "gzip"}),
            400,
            "invalid_content_encoding",
        )
        assert_openai_error(
            await post(gzip.compress(chat)[:-12], **{"content-encoding": "gzip"}),
            400,
            "invalid_content_encoding",
        )
        assert_openai_error(
            await post(chat, **{"content-encoding": "compress"}),
            415,
            "unsupported_content_encoding",
        )
        # Deep nesting is the client's error, not a crash of ours.
        for deep in (b"[" * 100_000, b'{"a":' * 100_000):
            assert_openai_error(await post(deep), 400, "invalid_json")
        # NaN and the infinities are not JSON (Python's json module accepts them).
        for constant in ("NaN", "Infinity", "-Infinity"):
            body = chat.replace(b'"model"', f'"temperature": {constant}, "model"'.encode())
            answer = await post(body)
            error = assert_openai_error(answer, 400, "invalid_json")
            assert constant.lstrip("-") in error["error"]["message"]
        check = await http.post(
            "/token/check",
            content=b'{"token": NaN}',
            headers={"content-type": "application/json"},
        )
        assert_openai_error(check, 400, "invalid_json")
        ping = await http.get("/ping")
        assert ping.status_code == 200


async def raw_exchange(url: str, head: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


async def test_big_and_broken_headers(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # Twenty accounts of real size in one header (about 9 KB): above aiohttp's 8190-byte limit.
    tokens = [f"refresh-{i:02d}-" + "t" * 420 for i in range(20)]
    secret = "refresh-secret-" + "z" * 40
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=60) as http,
    ):
        header = "Bearer " + ",".join(tokens)
        assert len(header) > 8600
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "kimi", "messages": [{"role": "user", "content": "twenty"}]},
            headers={"authorization": header},
        )
        assert answer.status_code == 200, answer.text[:500]
        assert_valid("openai.response", answer.json())

        # A 64 KB header: refused in JSON that echoes nothing.
        huge = "Bearer " + secret + "," + "y" * 64 * 1024
        answer = await http.post("/v1/chat/completions", json={}, headers={"authorization": huge})
        assert_openai_error(answer, 431, "header_too_large")
        assert secret not in answer.text
        # A NUL in a header (httpx refuses to send one, so by hand).
        raw = await raw_exchange(
            proxy.url,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + secret.encode() + b"\x00evil\r\n"
            b"Content-Length: 2\r\n\r\n{}",
        )
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400", raw[:300]
        assert secret.encode() not in raw
        error = json.loads(body)["error"]
        assert error["code"] in ("invalid_header", "malformed_request"), error
        ping = await http.get("/ping")
        assert ping.status_code == 200
    assert secret not in caplog.text
