"""End to end with files and images, both dialects: data: URLs, http(s) URLs the proxy downloads
(from a small aiohttp server on 127.0.0.1), and OpenAI `file` parts with `file_data`.

The fake Kimi echoes the files it was given (`[files: name (size bytes), ...]`), so the answer
proves the files reached the completion call; `fake.record.uploads` / `.files` prove the bytes did.
"""

from __future__ import annotations

import base64
import struct
import zlib

import httpx
import openai
import pytest
from aiohttp import web

from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from tests.test_e2e_dialects import (
    TOKEN,
    data_payloads,
    delta_text,
    sdk,
    stream_calls,
    valid_chunks,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def tiny_png() -> bytes:
    """A real 1x1 RGBA PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00\xff")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG = tiny_png()
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SERVED_PDF = PDF.replace(b"Catalog", b"Catalog /Served true")


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def file_url(url: str) -> dict:
    return {"type": "file", "file_url": {"url": url}}


def file_data(data: bytes, filename: str) -> dict:
    return {
        "type": "file",
        "file": {"file_data": base64.b64encode(data).decode(), "filename": filename},
    }


def uploaded(fake: FakeKimi) -> list[bytes]:
    return list(fake.record.uploads.values())


def refs_of(fake: FakeKimi, dialect: str) -> list[list[str]]:
    """The file ids each streaming call named."""
    out = []
    for call in stream_calls(fake, dialect):
        if dialect == "legacy":
            out.append([str(r) for r in call.json.get("refs") or []])
        else:
            blocks = call.json["message"].get("blocks") or []
            out.append([b["file"]["id"] for b in blocks if "file" in b])
    return out


@pytest.fixture
async def files_server():
    """A loopback HTTP server with one PDF at /docs/served.pdf."""

    async def pdf(request: web.Request) -> web.Response:
        return web.Response(body=SERVED_PDF, content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/docs/served.pdf", pdf)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def proxy(fake, dialect, tmp_path):
    async with running_proxy(
        fake.base_url,
        tmp_path,
        kimi_dialect=dialect,
        allow_private_urls=True,
        precreate_conversations=0,
    ) as p:
        yield p


async def test_image_data_url_file_url_and_file_data(fake, dialect, proxy, files_server):
    content = [
        text("what is in these?"),
        image(data_url("image/png", PNG)),
        file_url(files_server + "/docs/served.pdf"),
        file_data(PDF, "notes/report.pdf"),
    ]
    async with sdk(proxy) as client:
        result = await client.chat.completions.create(
            model="kimi", messages=[{"role": "user", "content": content}]
        )
    assert_valid("openai.response", result.to_dict())
    answer = result.choices[0].message.content
    assert answer.startswith("Echo: what is in these?")
    # Every file reached the completion call, in request order, with its real size.
    png_name = next(f.name for f in fake.record.files.values() if f.type == "image")
    assert answer.endswith(
        f" [files: {png_name} ({len(PNG)} bytes), served.pdf ({len(SERVED_PDF)} bytes),"
        f" report.pdf ({len(PDF)} bytes)]"
    )
    assert png_name.endswith(".png")
    assert sorted(uploaded(fake)) == sorted([PNG, SERVED_PDF, PDF])
    types = {f.name: (f.type, f.content_type) for f in fake.record.files.values()}
    assert types["served.pdf"] == ("file", "application/pdf")
    assert types["report.pdf"] == ("file", "application/pdf")
    assert types[png_name] == ("image", "image/png")
    (refs,) = refs_of(fake, dialect)
    assert len(refs) == 3
    # The storage PUTs never carried the Kimi access token.
    assert all("authorization" not in r.headers for r in fake.record.calls("upload"))


async def test_files_from_every_turn_of_a_new_history_are_uploaded(fake, dialect, proxy):
    messages = [
        {"role": "user", "content": [text("first"), file_data(PDF, "one.pdf")]},
        {"role": "assistant", "content": "seen one"},
        {"role": "user", "content": [text("second"), image(data_url("image/png", PNG))]},
    ]
    async with sdk(proxy) as client:
        stream = await client.chat.completions.create(model="kimi", stream=True, messages=messages)
        chunks = [c.to_dict() async for c in stream]
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
    answer = delta_text(chunks)
    assert f"one.pdf ({len(PDF)} bytes)" in answer
    assert f".png ({len(PNG)} bytes)]" in answer
    assert sorted(uploaded(fake)) == sorted([PDF, PNG])
    assert [len(r) for r in refs_of(fake, dialect)] == [2]


async def test_next_turn_uploads_only_its_new_file(fake, dialect, proxy):
    first = [{"role": "user", "content": [text("read this"), file_data(PDF, "a.pdf")]}]
    async with sdk(proxy) as client:
        one = await client.chat.completions.create(model="kimi", messages=first)
        history = [
            *first,
            {"role": "assistant", "content": one.choices[0].message.content},
            {"role": "user", "content": [text("and this"), image(data_url("image/png", PNG))]},
        ]
        two = await client.chat.completions.create(model="kimi", messages=history)
    assert one.choices[0].message.content.endswith(f"[files: a.pdf ({len(PDF)} bytes)]")
    assert two.choices[0].message.content.startswith("Echo: and this [files: ")
    assert "a.pdf" not in two.choices[0].message.content
    assert two.id == one.id  # the same Kimi conversation
    assert sorted(uploaded(fake)) == sorted([PDF, PNG])


async def test_the_same_document_twice_uploads_once(fake, dialect, proxy):
    doc = [text("summarise"), file_data(PDF, "same.pdf")]
    async with sdk(proxy) as client:
        one = await client.chat.completions.create(
            model="kimi", messages=[{"role": "user", "content": doc}]
        )
        # A legacy document is registered into its conversation, so reuse is per conversation:
        # continue the same one by id. Connect uploads are not bound to a chat.
        extra = {"conversation_id": one.id} if dialect == "legacy" else {}
        two = await client.chat.completions.create(
            model="kimi", messages=[{"role": "user", "content": doc}], extra_body=extra
        )
        pic = [text("look"), image(data_url("image/png", PNG))]
        for _ in range(2):
            # Images are never bound to a conversation: reused across new chats too.
            await client.chat.completions.create(
                model="kimi", messages=[{"role": "user", "content": pic}]
            )
    for result in (one, two):
        assert result.choices[0].message.content.endswith(f"[files: same.pdf ({len(PDF)} bytes)]")
    assert uploaded(fake).count(PDF) == 1
    assert uploaded(fake).count(PNG) == 1
    assert len(fake.record.calls("presign")) == 2
    refs = refs_of(fake, dialect)
    assert refs[0] == refs[1]
    assert refs[2] == refs[3]


async def test_private_url_is_refused_when_not_allowed(fake, dialect, tmp_path, files_server):
    async with (
        running_proxy(fake.base_url, tmp_path, kimi_dialect=dialect) as proxy,
        sdk(proxy) as client,
    ):
        content = [text("fetch it"), file_url(files_server + "/docs/served.pdf")]
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="kimi", messages=[{"role": "user", "content": content}]
            )
    error = info.value
    assert error.status_code == 400
    body = {"error": error.body}
    assert_valid("openai.error", body)
    assert body["error"]["param"] == "messages[0].content[1].file_url.url"
    assert "messages[0].content[1]" in body["error"]["message"]
    assert fake.record.uploads == {}
    assert stream_calls(fake, dialect) == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="parse_failed", match="parse"),
        # Stays at "parsing", then the parse stream is cut, every time: the proxy asks again
        # until `file_parse_timeout`, then answers 504.
        Fault(kind="parse_stuck", match="parse", seconds=0.3),
    ],
    ids=["parse_failed", "parse_stuck"],
)
async def test_legacy_parse_failure_is_an_error_naming_the_part(fake, tmp_path, fault):
    fake.set_scenario(Scenario.of(fault))
    async with (
        running_proxy(
            fake.base_url,
            tmp_path,
            kimi_dialect="legacy",
            precreate_conversations=0,
            file_parse_timeout=1,
        ) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        resp = await http.post(
            proxy.url + "/v1/chat/completions",
            json={
                "model": "kimi",
                "stream": True,
                "messages": [{"role": "user", "content": [text("bad"), file_data(PDF, "b.pdf")]}],
            },
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert resp.status_code == (504 if fault.kind == "parse_stuck" else 502)
        body = resp.json()
        assert_valid("openai.error", body)
        assert body["error"]["param"] == "messages[0].content[1].file.file_data"
        if fault.kind == "parse_stuck":
            assert len(fake.record.calls("parse")) > 1  # asked again after the cut
        assert fake.record.calls("completion") == []
        # The conversation created for the upload is not left behind.
        await wait_for(lambda: fake.record.live_conversations() == [])


async def test_streamed_answer_with_an_image(fake, dialect, proxy):
    body = {
        "model": "kimi",
        "stream": True,
        "messages": [
            {"role": "user", "content": [text("tiny"), image(data_url("image/png", PNG))]}
        ],
    }
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {TOKEN}"},
        ) as resp,
    ):
        assert resp.status_code == 200
        lines = [line async for line in resp.aiter_lines()]
    chunks = valid_chunks(data_payloads(lines))
    assert delta_text(chunks).endswith(f".png ({len(PNG)} bytes)]")
