"""The upload flow against an in-test fake of Kimi's four upload steps (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from addon.upstream._fetch import Fetcher, FetchError, FetchPolicy
from addon.upstream._upload import UploadedFile, Uploader, UploadError
from translator import InlineFile, KimiCall, UrlFile
from translator.legacy._calls import UploadedFile as RefFile

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.7\n" + b"%" * 64


def inline(data=PNG, name="cat.png", mime="image/png", param="messages[0].content[1]"):
    kind = "image" if mime.startswith("image/") else "file"
    return InlineFile(data=data, mime_type=mime, name=name, kind_hint=kind, param=param)


class FakeKimi:
    """Kimi's upload endpoints plus the storage, recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.puts: list[httpx.Request] = []
        #: statuses /api/file answers in turn (the last one repeats); None → connect's {"id"}
        self.register_statuses: list[str | None] = ["initialized"]
        #: bodies /api/file/parse_process answers in turn (the last one repeats)
        self.parse_bodies: list[bytes] = [b'data: {"event":"resp","status":"parsed"}\n\n']
        self.fail: dict[str, httpx.Response] = {}
        self.put_delay: dict[bytes, float] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._n = 0
        self._registers = 0
        self._parses = 0

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.calls if p == path)

    async def kimi(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.calls.append((request.method, path, body))
        if path in self.fail:
            return self.fail[path]
        if path == "/api/pre-sign-url":
            self._n += 1
            n = self._n
            return httpx.Response(
                200,
                json={
                    "url": f"https://storage.test/bucket/obj-{n}?sig=abc",
                    "object_name": f"obj-{n}",
                    "file_id": f"fid-{n}",
                },
            )
        if path == "/api/file":
            status = self.register_statuses[min(self._registers, len(self.register_statuses) - 1)]
            self._registers += 1
            ident = "id-" + (body.get("object_name") or body["file_id"])
            if status is None:
                return httpx.Response(200, json={"id": ident})
            return httpx.Response(
                200, json={"id": ident, "name": body["name"], "status": status, "size": 1}
            )
        if path == "/api/file/parse_process":
            out = self.parse_bodies[min(self._parses, len(self.parse_bodies) - 1)]
            self._parses += 1
            return httpx.Response(200, content=out, headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"error_type": "not.found", "message": path})

    async def storage(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.put_delay.get(request.content, 0.01))
        finally:
            self.in_flight -= 1
        self.puts.append(request)
        if "storage" in self.fail:
            return self.fail["storage"]
        return httpx.Response(200)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def env():
    fake = FakeKimi()
    kimi = httpx.AsyncClient(transport=httpx.MockTransport(fake.kimi), base_url="https://kimi.test")
    # The storage client carries a default Authorization on purpose: it must not reach storage.
    storage = httpx.AsyncClient(
        transport=httpx.MockTransport(fake.storage),
        headers={"authorization": "Bearer access-token"},
        cookies={"kimi-auth": "x"},
    )

    def file_server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/pic":
            # A wrong declared type: the bytes are a PNG.
            return httpx.Response(200, content=PNG, headers={"content-type": "text/plain"})
        return httpx.Response(404)

    fetch_client = httpx.AsyncClient(transport=httpx.MockTransport(file_server))

    async def resolve(host, port):
        return {"img.test": ["93.184.216.34"], "intranet.test": ["10.1.1.1"]}[host]

    fetcher = Fetcher(fetch_client, FetchPolicy(max_bytes=10_000), resolve)

    async def execute(call: KimiCall) -> httpx.Response:
        return await kimi.request(
            call.method, call.path, json=call.json, headers={"authorization": "Bearer t"}
        )

    clock = Clock()

    def make(**kw) -> Uploader:
        options = {
            "client": storage,
            "execute": execute,
            "fetcher": fetcher,
            "poll_interval": 0.01,
            "clock": clock,
        }
        options.update(kw)
        return Uploader(**options)

    try:
        yield fake, make, clock
    finally:
        await kimi.aclose()
        await storage.aclose()
        await fetch_client.aclose()


# --- the steps -------------------------------------------------------------------------------


async def test_legacy_image_steps(env):
    fake, make, _ = env
    (up,) = await make().upload_all("acct", [inline()], conversation_id="conv1")
    assert fake.calls == [
        ("POST", "/api/pre-sign-url", {"action": "image", "name": "cat.png", "size": len(PNG)}),
        ("POST", "/api/file", {"type": "image", "file_id": "fid-1", "name": "cat.png"}),
    ]
    (put,) = fake.puts
    assert put.method == "PUT"
    assert str(put.url) == "https://storage.test/bucket/obj-1?sig=abc"
    assert put.headers["content-type"] == "image/png"
    assert put.content == PNG
    assert "authorization" not in put.headers
    assert "cookie" not in put.headers
    assert isinstance(up, UploadedFile)
    assert isinstance(up, RefFile)  # what the completion calls take
    assert (up.id, up.name, up.size, up.kind, up.mime_type) == (
        "id-fid-1",
        "cat.png",
        len(PNG),
        "image",
        "image/png",
    )
    assert up.detail["status"] == "initialized"


async def test_legacy_file_steps_with_parse(env):
    fake, make, _ = env
    (up,) = await make().upload_all(
        "acct", [inline(PDF, "report", "application/octet-stream")], conversation_id="conv1"
    )
    assert fake.calls == [
        ("POST", "/api/pre-sign-url", {"action": "file", "name": "report.pdf", "size": len(PDF)}),
        (
            "POST",
            "/api/file",
            {
                "type": "file",
                "name": "report.pdf",
                "object_name": "obj-1",
                "file_id": "",
                "chat_id": "conv1",
            },
        ),
        ("POST", "/api/file/parse_process", {"ids": ["id-obj-1"]}),
    ]
    assert fake.puts[0].headers["content-type"] == "application/pdf"
    assert (up.id, up.kind, up.mime_type, up.name) == (
        "id-obj-1",
        "file",
        "application/pdf",
        "report.pdf",
    )


async def test_connect_steps(env):
    fake, make, _ = env
    fake.register_statuses = [None]
    files = [inline(), inline(PDF, "a.pdf", "application/pdf")]
    ups = await make(dialect="connect", concurrency=1).upload_all(
        "acct", files, conversation_id=None
    )
    assert fake.calls == [
        ("POST", "/api/pre-sign-url", {"action": "image", "name": "cat.png", "size": len(PNG)}),
        (
            "POST",
            "/api/file",
            {
                "type": "image",
                "name": "cat.png",
                "size": len(PNG),
                "file_id": "fid-1",
                "object_name": "obj-1",
            },
        ),
        ("POST", "/api/pre-sign-url", {"action": "file", "name": "a.pdf", "size": len(PDF)}),
        (
            "POST",
            "/api/file",
            {
                "type": "file",
                "name": "a.pdf",
                "size": len(PDF),
                "file_id": "fid-2",
                "object_name": "obj-2",
            },
        ),
    ]
    assert [u.id for u in ups] == ["id-obj-1", "id-obj-2"]
    assert [u.name for u in ups] == ["cat.png", "a.pdf"]  # no name in connect's answer


async def test_dialect_override_per_call(env):
    fake, make, _ = env
    fake.register_statuses = [None]
    await make().upload_all("acct", [inline()], conversation_id=None, dialect="connect")
    assert fake.calls[1][2]["size"] == len(PNG)


async def test_execute_override_per_call(env):
    _, make, _ = env
    used: list[str] = []
    uploader = make()

    async def other(call):
        used.append(call.path)
        return await uploader.execute(call)

    await uploader.upload_all("acct", [inline()], conversation_id="c", execute=other)
    assert used == ["/api/pre-sign-url", "/api/file"]


async def test_register_is_polled_until_ready(env):
    fake, make, _ = env
    fake.register_statuses = ["uploading", "uploading", "initialized"]
    (up,) = await make().upload_all("acct", [inline()], conversation_id="c")
    assert fake.count("/api/file") == 3
    assert up.detail["status"] == "initialized"


async def test_parse_is_repeated_until_parsed(env):
    fake, make, _ = env
    fake.parse_bodies = [b'data: {"status":"parsing"}\n\n', b'{"ids":["x"],"status":"parsed"}']
    await make().upload_all("a", [inline(PDF, "a.pdf", "application/pdf")], conversation_id="c")
    assert fake.count("/api/file/parse_process") == 2


async def test_parse_skipped_when_already_parsed(env):
    fake, make, _ = env
    fake.register_statuses = ["parsed"]
    await make().upload_all("a", [inline(PDF, "a.pdf", "application/pdf")], conversation_id="c")
    assert fake.count("/api/file/parse_process") == 0


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"event":"resp","file_info":{"id":"id-obj-1","status":"parsed"}}\n\n',
        b'{"status": "parsing"}\n{"status": "parsed"}\n',
        b'{\n  "files": [\n    {"id": "id-obj-1", "status": "parsed"}\n  ]\n}',
        b': comment\n\nevent: status\ndata: [{"status":"PARSED"}]\n\n',
    ],
)
async def test_parse_answer_shapes_are_tolerated(env, body):
    fake, make, _ = env
    fake.parse_bodies = [body]
    (up,) = await make().upload_all(
        "a", [inline(PDF, "a.pdf", "application/pdf")], conversation_id="c"
    )
    assert up.id == "id-obj-1"
    assert fake.count("/api/file/parse_process") == 1


# --- failures --------------------------------------------------------------------------------


async def test_parse_timeout_is_504(env):
    fake, make, _ = env
    fake.parse_bodies = [b'data: {"status":"parsing"}\n\n']
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(UploadError) as info:
        await make(parse_timeout=0.2).upload_all(
            "a",
            [inline(PDF, "a.pdf", "application/pdf", param="messages[1].content[0]")],
            conversation_id="c",
        )
    err = info.value
    assert (err.status, err.code, err.param) == (504, "upload_timeout", "messages[1].content[0]")
    assert "messages[1].content[0]" in err.message
    assert err.to_openai()["error"]["type"] == "upstream_error"
    assert loop.time() - start < 2
    assert fake.count("/api/file/parse_process") > 1


async def test_register_poll_timeout_is_504(env):
    fake, make, _ = env
    fake.register_statuses = ["uploading"]
    with pytest.raises(UploadError) as info:
        await make(parse_timeout=0.1).upload_all("a", [inline()], conversation_id="c")
    assert info.value.status == 504


@pytest.mark.parametrize(
    ("where", "response", "status"),
    [
        ("/api/pre-sign-url", httpx.Response(500, text="oops"), 502),
        ("/api/pre-sign-url", httpx.Response(200, text="not json"), 502),
        ("/api/pre-sign-url", httpx.Response(200, json={"object_name": "o"}), 502),
        ("/api/file", httpx.Response(200, json={"error_type": "file.bad", "message": "x"}), 502),
        ("/api/file", httpx.Response(200, json={"status": "failed"}), 502),
        ("/api/file/parse_process", httpx.Response(200, text='data: {"status":"failed"}'), 502),
        ("/api/file/parse_process", httpx.Response(503, text="busy"), 502),
        ("storage", httpx.Response(403, text="AccessDenied"), 502),
        # Kimi's own auth/quota statuses are kept, so the caller can refresh or fail over.
        ("/api/pre-sign-url", httpx.Response(401, json={"error_type": "auth.token.invalid"}), 401),
        ("/api/file", httpx.Response(429, json={"error_type": "x", "message": "slow down"}), 429),
    ],
)
async def test_kimi_failures_are_upload_errors(env, where, response, status):
    fake, make, _ = env
    fake.fail[where] = response
    with pytest.raises(UploadError) as info:
        await make().upload_all("a", [inline(PDF, "a.pdf", "application/pdf")], conversation_id="c")
    assert info.value.status == status
    assert info.value.param == "messages[0].content[1]"
    assert "messages[0].content[1]" in info.value.message


async def test_transport_failure_is_upload_error(env):
    _, make, _ = env

    async def broken(call):
        raise httpx.ConnectError("refused")

    async def slow(call):
        raise httpx.ReadTimeout("slow")

    with pytest.raises(UploadError) as info:
        await make(execute=broken).upload_all("a", [inline()], conversation_id="c")
    assert info.value.status == 502
    with pytest.raises(UploadError) as info:
        await make(execute=slow).upload_all("a", [inline()], conversation_id="c")
    assert info.value.status == 504


async def test_empty_and_oversized_inline_files_are_400(env):
    fake, make, _ = env
    for data, code in ((b"", "empty_file"), (b"x" * 10_001, "file_too_large")):
        with pytest.raises(UploadError) as info:
            await make().upload_all("a", [inline(data, "x.txt", "text/plain")], conversation_id="c")
        assert (info.value.status, info.value.code, info.value.type) == (
            400,
            code,
            "invalid_request_error",
        )
    assert fake.calls == []


async def test_bad_conversation_id_is_400(env):
    _, make, _ = env
    with pytest.raises(UploadError) as info:
        await make().upload_all(
            "a", [inline(PDF, "a.pdf", "application/pdf")], conversation_id="../x"
        )
    assert info.value.status == 400


# --- sources and sniffing --------------------------------------------------------------------


async def test_url_source_is_fetched_and_sniffed(env):
    fake, make, _ = env
    source = UrlFile(url="https://img.test/pic", kind_hint="file", param="m[0].c[0].file_url.url")
    (up,) = await make().upload_all("a", [source], conversation_id="c")
    assert (up.kind, up.mime_type, up.name) == ("image", "image/png", "pic.png")
    assert fake.puts[0].content == PNG
    assert fake.calls[0][2]["action"] == "image"


async def test_fetch_errors_propagate(env):
    fake, make, _ = env
    source = UrlFile(url="http://intranet.test/x", kind_hint="image", param="m[0].c[2].url")
    with pytest.raises(FetchError) as info:
        await make().upload_all("a", [source], conversation_id="c")
    assert (info.value.status, info.value.code, info.value.param) == (
        400,
        "url_refused",
        "m[0].c[2].url",
    )
    assert fake.calls == []


async def test_mislabelled_image_is_uploaded_as_file(env):
    fake, make, _ = env
    (up,) = await make().upload_all(
        "a", [inline(PDF, "fake.png", "image/png")], conversation_id="c"
    )
    assert (up.kind, up.mime_type) == ("file", "application/pdf")
    assert fake.calls[0][2]["action"] == "file"


# --- concurrency, order, reuse ---------------------------------------------------------------


async def test_concurrency_bound_and_order(env):
    fake, make, _ = env
    datas = [PNG + bytes([i]) * (i + 1) for i in range(6)]
    # The first files are the slowest: finishing order is the reverse of request order.
    for i, data in enumerate(datas):
        fake.put_delay[data] = 0.06 - i * 0.01
    files = [inline(d, f"f{i}.png") for i, d in enumerate(datas)]
    ups = await make(concurrency=2).upload_all("a", files, conversation_id="c")
    assert [u.name for u in ups] == [f"f{i}.png" for i in range(6)]
    assert [u.size for u in ups] == [len(d) for d in datas]
    assert fake.max_in_flight == 2


async def test_reuse_within_ttl(env):
    fake, make, clock = env
    uploader = make(reuse_ttl=60)
    (first,) = await uploader.upload_all("acct", [inline()], conversation_id="c1")
    calls = len(fake.calls)
    (again,) = await uploader.upload_all("acct", [inline(name="other.png")], conversation_id="c2")
    assert again is first
    assert len(fake.calls) == calls
    assert len(fake.puts) == 1
    # another account uploads its own copy
    await uploader.upload_all("other", [inline()], conversation_id="c1")
    assert len(fake.puts) == 2
    # after the ttl, a new upload
    clock.now += 61
    (late,) = await uploader.upload_all("acct", [inline()], conversation_id="c1")
    assert late is not first
    assert len(fake.puts) == 3


async def test_legacy_file_reuse_is_per_conversation(env):
    fake, make, _ = env
    uploader = make()
    pdf = inline(PDF, "a.pdf", "application/pdf")
    await uploader.upload_all("acct", [pdf], conversation_id="c1")
    await uploader.upload_all("acct", [pdf], conversation_id="c1")
    assert len(fake.puts) == 1
    await uploader.upload_all("acct", [pdf], conversation_id="c2")
    assert len(fake.puts) == 2


async def test_concurrent_uploads_of_same_bytes_share_one(env):
    fake, make, _ = env
    fake.put_delay[PNG] = 0.05
    uploader = make()
    a, b = await asyncio.gather(
        uploader.upload_all("acct", [inline(), inline(name="b.png")], conversation_id="c"),
        uploader.upload_all("acct", [inline(name="c.png")], conversation_id="c"),
    )
    assert len(fake.puts) == 1
    assert fake.count("/api/pre-sign-url") == 1
    assert a[0] is a[1] is b[0]


async def test_failed_upload_is_not_cached(env):
    fake, make, _ = env
    uploader = make()
    fake.fail["storage"] = httpx.Response(500)
    with pytest.raises(UploadError):
        await uploader.upload_all("acct", [inline()], conversation_id="c")
    del fake.fail["storage"]
    (up,) = await uploader.upload_all("acct", [inline()], conversation_id="c")
    assert up.id.startswith("id-")
    assert fake.count("/api/pre-sign-url") == 2


async def test_one_failure_cancels_the_rest(env):
    fake, make, _ = env
    slow = PNG + b"slow"
    fake.put_delay[slow] = 5
    files = [
        inline(slow, "slow.png"),
        UrlFile(url="https://img.test/missing", kind_hint="image", param="m[0].c[1]"),
    ]
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(FetchError, match="404"):
        await make().upload_all("acct", files, conversation_id="c")
    assert loop.time() - start < 2
    await asyncio.sleep(0.05)
    # The slow PUT was cancelled, not left running in the background.
    assert fake.in_flight == 0
    assert all(put.content != slow for put in fake.puts)


async def test_a_leaving_waiter_does_not_cancel_a_shared_upload(env):
    fake, make, _ = env
    fake.put_delay[PNG] = 0.1
    uploader = make()
    leaving = asyncio.create_task(uploader.upload_all("acct", [inline()], conversation_id="c"))
    staying = asyncio.create_task(uploader.upload_all("acct", [inline()], conversation_id="c"))
    await asyncio.sleep(0.03)
    assert fake.in_flight == 1
    leaving.cancel()
    (up,) = await staying
    assert leaving.cancelled()
    assert up.id == "id-fid-1"
    assert len(fake.puts) == 1
