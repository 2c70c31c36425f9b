"""The SSRF-safe fetcher against a real aiohttp server on 127.0.0.1 (and MockTransport where a
"public" address must be simulated)."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from addon.upstream._fetch import (
    Fetcher,
    FetchError,
    FetchPolicy,
    make_fetch_client,
    refusal_reason,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
PARAM = "messages[0].content[1].image_url.url"


# --- the test server -------------------------------------------------------------------------


class Server:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.port = 0
        self.disconnected = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.middlewares.append(self._record)
        r = app.router
        r.add_get("/file.png", fixed(body=PNG, content_type="image/png"))
        r.add_get("/named", self._named)
        r.add_get("/star", self._star)
        r.add_get("/dir/", fixed(body=b"hello", content_type="text/plain"))
        r.add_get("/echo", self._echo)
        r.add_get("/to-file", _redirect("/file.png"))
        r.add_get("/loop", _redirect("/loop"))
        r.add_get("/chain/{n}", self._chain)
        r.add_get("/to-loopback", _redirect("http://127.0.0.1:1/secret"))
        r.add_get("/to-metadata", _redirect("http://169.254.169.254/latest/meta-data"))
        r.add_get("/to-ftp", _redirect("ftp://example.com/x"))
        r.add_get("/no-location", fixed(status=302))
        r.add_get("/missing", fixed(status=404, text="nope"))
        r.add_get("/error", fixed(status=500, text="boom"))
        r.add_get("/huge", self._huge)
        r.add_get("/huge-chunked", self._huge_chunked)
        r.add_get("/slow-headers", self._slow_headers)
        r.add_get("/slow-body", self._slow_body)
        r.add_get("/drip", self._drip)
        return app

    @web.middleware
    async def _record(self, request, handler):
        self.seen.append({"path": request.path_qs, **dict(request.headers)})
        return await handler(request)

    async def _named(self, _):
        return web.Response(
            body=b"%PDF-1.4 x",
            headers={
                "content-type": "application/pdf; charset=binary",
                "content-disposition": 'attachment; filename="../../etc/report 1.pdf"',
            },
        )

    async def _star(self, _):
        return web.Response(
            body=b"x",
            headers={"content-disposition": "attachment; filename*=UTF-8''na%C3%AFve.txt"},
        )

    async def _echo(self, request):
        return web.Response(text=json.dumps(dict(request.headers)), content_type="application/json")

    async def _chain(self, request):
        n = int(request.match_info["n"])
        return web.Response(
            status=302, headers={"location": "/file.png" if n == 0 else f"/chain/{n - 1}"}
        )

    async def _huge(self, request):
        # Claims 50 MB; the fetcher must refuse on the header alone.
        response = web.StreamResponse(headers={"content-length": str(50 * 1024 * 1024)})
        await response.prepare(request)
        try:
            await response.write(b"x" * 1024)
            await asyncio.sleep(5)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response

    async def _huge_chunked(self, request):
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(10_000):
                await response.write(b"y" * 65536)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response

    async def _slow_headers(self, _):
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def _slow_body(self, request):
        response = web.StreamResponse(headers={"content-length": "10"})
        await response.prepare(request)
        await response.write(b"12345")
        await asyncio.sleep(5)
        await response.write(b"67890")
        return response

    async def _drip(self, request):
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b".")
            await asyncio.sleep(0.05)
        return response


def _redirect(location: str):
    return fixed(status=302, headers={"location": location})


def fixed(**response):
    async def handler(_request):
        return web.Response(**response)

    return handler


async def _start(app: web.Application, ssl_context: ssl.SSLContext | None = None):
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


@pytest.fixture
async def server():
    srv = Server()
    runner, srv.port = await _start(srv.app())
    try:
        yield srv
    finally:
        await runner.cleanup()


def resolver_for(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


LOCAL = resolver_for({"files.test": ["127.0.0.1"]})


@pytest.fixture
async def client():
    async with make_fetch_client(FetchPolicy()) as c:
        yield c


def fetcher(client, resolver=LOCAL, **policy) -> Fetcher:
    return Fetcher(client, FetchPolicy(**{"allow_private": True, **policy}), resolver)


# --- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.5.6.7", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "embeds 127.0.0.1"),
        ("::ffff:10.0.0.1", "embeds 10.0.0.1"),
        ("::10.0.0.1", "embeds 10.0.0.1"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared address space"),
        ("100.127.255.254", "shared address space"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "private"),
        ("2002:7f00:1::", "embeds 127.0.0.1"),  # 6to4
        ("2002:a00:1::", "embeds 10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "embeds 10.0.0.1"),  # Teredo, client 10.0.0.1
        ("64:ff9b::a00:1", "embeds 10.0.0.1"),  # NAT64
        ("not-an-ip", "not an IP address"),
    ],
)
def test_refusal_reason_refuses(address, why):
    assert refusal_reason(address) is not None
    assert why in refusal_reason(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_refusal_reason_allows_public(address):
    assert refusal_reason(address) is None


def _no_network(calls: list[httpx.Request]):
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=b"should not happen")

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/x",
        "http://100.64.1.1/x",
        "http://[fc00::1]/x",
        "http://0.0.0.0/x",
        "https://127.0.0.1/x",
        "http://loopback.test/x",
        "http://mixed.test/x",
        "http://localhost6.test:8080/x",
    ],
)
async def test_private_addresses_are_refused(url):
    sent: list[httpx.Request] = []
    resolver = resolver_for(
        {
            "loopback.test": ["127.0.0.1"],
            "mixed.test": ["93.184.216.34", "10.0.0.1"],
            "localhost6.test": ["::1"],
        }
    )
    async with _no_network(sent) as c:
        f = Fetcher(c, FetchPolicy(), resolver)
        with pytest.raises(FetchError) as info:
            await f.fetch(url, param=PARAM)
    err = info.value
    assert (err.status, err.type, err.code, err.param) == (
        400,
        "invalid_request_error",
        "url_refused",
        PARAM,
    )
    assert PARAM in err.message
    assert "refused" in err.message
    assert err.to_openai()["error"]["code"] == "url_refused"
    assert sent == []


async def test_loopback_server_is_not_contacted_without_allow_private(server, client):
    f = Fetcher(client, FetchPolicy(), LOCAL)
    for url in (
        f"http://127.0.0.1:{server.port}/file.png",
        f"http://files.test:{server.port}/file.png",
    ):
        with pytest.raises(FetchError, match="loopback"):
            await f.fetch(url, param=PARAM)
    assert server.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "data:text/plain;base64,aGk=",
        "gopher://example.com/",
        "http://user:pw@example.com/x",
        "http:///nohost",
        "not a url",
    ],
)
async def test_bad_urls_are_refused(url):
    sent: list[httpx.Request] = []
    async with _no_network(sent) as c:
        with pytest.raises(FetchError) as info:
            await Fetcher(c, FetchPolicy(), LOCAL).fetch(url, param=PARAM)
    assert info.value.code == "url_refused"
    assert sent == []


async def test_dns_failure(client):
    with pytest.raises(FetchError) as info:
        await fetcher(client).fetch("http://nowhere.test/x", param=PARAM)
    assert info.value.code == "fetch_failed"
    assert "resolve" in info.value.message


async def test_empty_resolution_is_a_dns_failure(client):
    f = fetcher(client, resolver_for({"empty.test": []}))
    with pytest.raises(FetchError, match="resolve"):
        await f.fetch("http://empty.test/x", param=PARAM)


# --- the checked IP is the one connected to ------------------------------------------------


async def test_connects_to_checked_ip_with_original_host(server, client):
    calls: list[str] = []
    f = fetcher(client, resolver_for({"files.test": ["127.0.0.1"]}, calls))
    got = await f.fetch(f"http://files.test:{server.port}/echo", param=PARAM)
    headers = json.loads(got.data)
    assert headers["Host"] == f"files.test:{server.port}"
    assert calls == ["files.test"]  # one lookup, no second resolution by the transport
    assert got.final_url == f"http://files.test:{server.port}/echo"
    assert got.content_type == "application/json"


async def test_mock_transport_sees_ip_url_and_host_header():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    resolver = resolver_for({"cdn.example": ["93.184.216.34", "93.184.216.35"]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
        got = await Fetcher(c, FetchPolicy(), resolver).fetch(
            "https://cdn.example/img/cat.png?size=2", param=PARAM
        )
    (request,) = seen
    assert request.url.host == "93.184.216.34"
    assert request.url.raw_path == b"/img/cat.png?size=2"
    assert request.headers["host"] == "cdn.example"
    assert request.extensions["sni_hostname"] == "cdn.example"
    assert got.filename == "cat.png"
    assert got.data == PNG


async def test_no_client_credentials_reach_the_server(server):
    async with make_fetch_client(
        FetchPolicy(),
        headers={"Authorization": "Bearer sk-secret", "Cookie": "a=b"},
        cookies={"session": "s3cret"},
        auth=("user", "pass"),
    ) as c:
        got = await fetcher(c).fetch(f"http://files.test:{server.port}/echo", param=PARAM)
    headers = {k.lower(): v for k, v in json.loads(got.data).items()}
    assert "authorization" not in headers
    assert "cookie" not in headers
    assert headers["user-agent"].startswith("kimi-free-api")
    assert headers["accept"] == "*/*"


# --- TLS: certificate verified against the hostname while connecting to the IP -------------


def _self_signed(name: str, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_uses_hostname_for_sni_and_verification(tmp_path):
    cert_path, key_path = _self_signed("files.test", tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    seen_sni: list[str | None] = []
    server_ctx.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))

    srv = Server()
    runner, port = await _start(srv.app(), server_ctx)
    try:
        async with make_fetch_client(FetchPolicy(), verify=client_ctx) as c:
            resolver = resolver_for({"files.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
            f = fetcher(c, resolver)
            got = await f.fetch(f"https://files.test:{port}/file.png", param=PARAM)
            assert got.data == PNG
            assert seen_sni == ["files.test"]
            assert srv.seen[0]["Host"] == f"files.test:{port}"
            # A name the certificate does not cover fails verification although the IP is the
            # same: verification really uses the hostname, not the address connected to.
            async with make_fetch_client(FetchPolicy(), verify=client_ctx) as c2:
                with pytest.raises(FetchError) as info:
                    await fetcher(c2, resolver).fetch(
                        f"https://other.test:{port}/file.png", param=PARAM
                    )
            assert info.value.code == "fetch_failed"
    finally:
        await runner.cleanup()


# --- redirects -------------------------------------------------------------------------------


async def test_redirect_to_same_server_is_followed(server, client):
    got = await fetcher(client).fetch(f"http://files.test:{server.port}/to-file", param=PARAM)
    assert got.data == PNG
    assert got.final_url == f"http://files.test:{server.port}/file.png"
    assert got.filename == "file.png"
    assert [s["path"] for s in server.seen] == ["/to-file", "/file.png"]
    assert all(s["Host"] == f"files.test:{server.port}" for s in server.seen)


async def test_redirect_targets_are_rechecked():
    # cdn.example is "public"; it redirects to a name resolving to a private address.
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://internal.test/admin"})

    resolver = resolver_for({"cdn.example": ["93.184.216.34"], "internal.test": ["10.0.0.5"]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(FetchError) as info:
            await Fetcher(c, FetchPolicy(), resolver).fetch("http://cdn.example/a", param=PARAM)
    assert info.value.code == "url_refused"
    assert "internal.test" in info.value.message
    assert seen == ["http://93.184.216.34/a"]


@pytest.mark.parametrize(
    ("path", "code"),
    [("/to-metadata", "url_refused"), ("/to-ftp", "url_refused"), ("/to-loopback", "url_refused")],
)
async def test_redirects_from_real_server_are_rechecked(server, client, path, code):
    # allow_private lets the first hop reach 127.0.0.1; a strict policy for the same names would
    # refuse at once, so simulate "public first hop" by allowing only the first address.
    class FirstHopOnly(Fetcher):
        hops = 0

        async def _checked_address(self, host, port, param):
            self.hops += 1
            self.policy = FetchPolicy(allow_private=self.hops == 1)
            return await super()._checked_address(host, port, param)

    f = FirstHopOnly(client, FetchPolicy(), LOCAL)
    with pytest.raises(FetchError) as info:
        await f.fetch(f"http://files.test:{server.port}{path}", param=PARAM)
    assert info.value.code == code
    assert len(server.seen) == 1


async def test_redirect_chain_within_limit(server, client):
    got = await fetcher(client, max_redirects=3).fetch(
        f"http://files.test:{server.port}/chain/2", param=PARAM
    )
    assert got.data == PNG
    assert len(server.seen) == 4


async def test_redirect_limit(server, client):
    with pytest.raises(FetchError) as info:
        await fetcher(client, max_redirects=2).fetch(
            f"http://files.test:{server.port}/chain/2", param=PARAM
        )
    assert info.value.code == "fetch_failed"
    assert "too many redirects" in info.value.message
    assert len(server.seen) == 3  # the first request + 2 followed redirects


async def test_redirect_loop(server, client):
    with pytest.raises(FetchError, match="too many redirects"):
        await fetcher(client).fetch(f"http://files.test:{server.port}/loop", param=PARAM)
    assert len(server.seen) == 6


async def test_redirect_without_location(server, client):
    with pytest.raises(FetchError, match="without a Location"):
        await fetcher(client).fetch(f"http://files.test:{server.port}/no-location", param=PARAM)


# --- statuses, sizes, timeouts ---------------------------------------------------------------


@pytest.mark.parametrize(("path", "status"), [("/missing", "404"), ("/error", "500")])
async def test_http_error_status(server, client, path, status):
    with pytest.raises(FetchError) as info:
        await fetcher(client).fetch(f"http://files.test:{server.port}{path}", param=PARAM)
    assert info.value.code == "fetch_failed"
    assert f"HTTP {status}" in info.value.message
    assert info.value.status == 400


async def test_content_length_over_cap_is_refused_before_reading(server, client):
    f = fetcher(client, max_bytes=1024 * 1024)
    with pytest.raises(FetchError) as info:
        async with f.open(f"http://files.test:{server.port}/huge", param=PARAM) as _:
            pytest.fail("the stream must not open")
    assert info.value.code == "file_too_large"
    assert str(1024 * 1024) in info.value.message


async def test_streamed_body_over_cap_is_aborted(server, client):
    f = fetcher(client, max_bytes=1024 * 1024)
    received: list[int] = []

    async def consume():
        async with f.open(f"http://files.test:{server.port}/huge-chunked", param=PARAM) as s:
            assert s.content_length is None
            async for chunk in s.aiter_bytes():
                received.append(len(chunk))

    with pytest.raises(FetchError) as info:
        await consume()
    assert info.value.code == "file_too_large"
    assert 0 < sum(received) <= 1024 * 1024
    # The fetcher hung up: the server's writes fail long before its 650 MB are sent.
    await asyncio.wait_for(server.disconnected.wait(), 5)


async def test_fetch_under_cap(server, client):
    got = await fetcher(client, max_bytes=len(PNG)).fetch(
        f"http://files.test:{server.port}/file.png", param=PARAM
    )
    assert got.data == PNG


async def test_read_timeout_before_headers(server, client):
    f = fetcher(client, read_timeout=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(FetchError) as info:
        await f.fetch(f"http://files.test:{server.port}/slow-headers", param=PARAM)
    assert info.value.code == "fetch_timeout"
    assert loop.time() - start < 2


async def test_read_timeout_in_body(server, client):
    with pytest.raises(FetchError) as info:
        await fetcher(client, read_timeout=0.2).fetch(
            f"http://files.test:{server.port}/slow-body", param=PARAM
        )
    assert info.value.code == "fetch_timeout"


async def test_total_timeout_on_a_dripping_body(server, client):
    # Each byte arrives well within read_timeout, but the whole takes 5 s.
    f = fetcher(client, read_timeout=1, total_timeout=0.4)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(FetchError) as info:
        await f.fetch(f"http://files.test:{server.port}/drip", param=PARAM)
    assert info.value.code == "fetch_timeout"
    assert loop.time() - start < 2


async def test_total_timeout_covers_dns(client):
    async def slow_resolver(host, port):
        await asyncio.sleep(5)
        return ["127.0.0.1"]

    f = fetcher(client, slow_resolver, total_timeout=0.2)
    with pytest.raises(FetchError) as info:
        await f.fetch("http://files.test/x", param=PARAM)
    assert info.value.code == "fetch_timeout"


async def test_connection_refused(client):
    # Find a closed port: bind, note it, close.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(FetchError) as info:
        await fetcher(client).fetch(f"http://files.test:{port}/x", param=PARAM)
    assert info.value.code == "fetch_failed"
    assert "cannot connect" in info.value.message


# --- filenames -------------------------------------------------------------------------------


async def test_filename_from_content_disposition_is_sanitised(server, client):
    got = await fetcher(client).fetch(f"http://files.test:{server.port}/named", param=PARAM)
    assert got.filename == "report 1.pdf"
    assert got.content_type == "application/pdf"


async def test_filename_from_rfc5987_content_disposition(server, client):
    got = await fetcher(client).fetch(f"http://files.test:{server.port}/star", param=PARAM)
    assert got.filename == "naïve.txt"
    assert got.content_type == "application/octet-stream"


async def test_filename_from_hash_when_url_has_none(server, client):
    got = await fetcher(client).fetch(f"http://files.test:{server.port}/dir/", param=PARAM)
    assert got.data == b"hello"
    assert got.filename.startswith("file-")
    assert got.filename.endswith(".txt")
    again = await fetcher(client).fetch(f"http://files.test:{server.port}/dir/", param=PARAM)
    assert again.filename == got.filename
