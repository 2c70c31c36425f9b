"""The interception guard without gaps: host names compared normalised, no pass-through to
loopback/private destinations, no credential in any flow or capture, mitmproxy's own errors in
OpenAI's JSON shape. Every destination here is a loopback name or address."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from mitmproxy import connection, io
from mitmproxy.proxy import mode_specs, server_hooks

from addon.mitm._errors import error_body
from addon.mitm._hosts import normalise_host
from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

CLIENT_PATHS = {"/v1/chat/completions", "/v1/models", "/token/check"}
CHAT = {"model": "kimi", "messages": [{"role": "user", "content": "guarded hello"}]}


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body
    return body


@pytest.fixture
async def loopback_site():
    """A plain HTTP server on loopback standing for a service a LAN client must not reach."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="private service")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("api.openai.com.", "api.openai.com"),
        ("API.OpenAI.COM", "api.openai.com"),
        ("api。openai.com", "api.openai.com"),  # an ideographic full stop is a dot in IDNA
        ("LOCALHOST..", "localhost"),
        ("[::1]", "::1"),
        ("Bücher.example.", "xn--bcher-kva.example"),
    ],
)
def test_host_names_are_normalised(spelling, expected):
    assert normalise_host(spelling) == expected


def _hook_data(host: str, port: int, mode: str) -> server_hooks.ServerConnectionHookData:
    client = connection.Client(
        peername=("127.0.0.1", 1),
        sockname=("127.0.0.1", 2),
        timestamp_start=0,
        proxy_mode=mode_specs.ProxyMode.parse(mode),
    )
    return server_hooks.ServerConnectionHookData(
        server=connection.Server(address=(host, port)), client=client
    )


async def test_intercepted_host_spelled_differently_is_answered_not_passed_through(
    tmp_path, no_proxy_env
):
    async with (
        FakeKimi() as fake,
        running_proxy(
            fake.base_url,
            tmp_path,
            regular=True,
            kimi_dialect="legacy",
            intercept_hosts=["LOCALHOST.", "api.openai.com"],
        ) as proxy,
        httpx.AsyncClient(proxy=proxy.regular_url, trust_env=False, timeout=30) as http,
    ):
        for url in (
            "http://localhost/v1/chat/completions",
            "http://LocalHost./v1/chat/completions",
        ):
            answer = await http.post(
                url, json=CHAT, headers={"authorization": "Bearer refresh-dot"}
            )
            assert answer.status_code == 200, (url, answer.text)
            assert_valid("openai.response", answer.json())
            assert "guarded hello" in answer.json()["choices"][0]["message"]["content"]
        # The guard refuses every spelling of an intercepted host, before any DNS lookup.
        for spelling in ("api.openai.com.", "API.OPENAI.COM", "api。openai.com", "localhost."):
            data = _hook_data(spelling, 443, "regular")
            await proxy.addon.server_connect(data)
            assert data.server.error, spelling
            assert "refuses" in data.server.error


async def test_regular_proxy_does_not_pass_through_to_loopback(
    tmp_path, no_proxy_env, loopback_site
):
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, regular=True, kimi_dialect="legacy") as proxy,
        httpx.AsyncClient(proxy=proxy.regular_url, trust_env=False, timeout=30) as http,
    ):
        for host in ("127.0.0.1", "localhost", "LOCALHOST.", "127.0.0.2"):
            answer = await http.get(f"http://{host}:{loopback_site}/admin")
            body = assert_openai_error(answer, 502, "destination_refused")
            assert "private service" not in answer.text
            assert "loopback" in body["error"]["message"]
        # Link-local (cloud metadata) and private ranges: refused without a connection attempt.
        for address in ("169.254.169.254", "10.0.0.1", "192.168.1.1", "fe80::1"):
            data = _hook_data(address, 80, "regular")
            await proxy.addon.server_connect(data)
            assert data.server.error, address


async def test_allow_private_urls_lets_the_regular_proxy_reach_loopback(
    tmp_path, no_proxy_env, loopback_site
):
    async with (
        FakeKimi() as fake,
        running_proxy(
            fake.base_url, tmp_path, regular=True, kimi_dialect="legacy", allow_private_urls=True
        ) as proxy,
        httpx.AsyncClient(proxy=proxy.regular_url, trust_env=False, timeout=30) as http,
    ):
        answer = await http.get(f"http://127.0.0.1:{loopback_site}/admin")
        assert answer.status_code == 200
        assert answer.text == "private service"


class HeaderSpy:
    """An addon after ours that records every request's headers when it first sees them."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[str, str]]] = []

    def requestheaders(self, flow) -> None:
        self.seen.append(list(flow.request.headers.items(multi=True)))


async def test_no_credential_in_any_flow_or_capture(tmp_path, no_proxy_env, caplog):
    capture = tmp_path / "flows.mitm"
    tokens = {
        "bearer": "refresh-" + "b" * 60,
        "x-api-key": "refresh-" + "k" * 60,
        "checked": "refresh-" + "c" * 60,
    }
    caplog.set_level(logging.DEBUG)
    async with (
        FakeKimi() as fake,
        running_proxy(
            fake.base_url,
            tmp_path,
            regular=True,
            kimi_dialect="legacy",
            intercept_hosts=["localhost"],
            save_stream_file=str(capture),
        ) as proxy,
    ):
        # Stands for mitmweb's view, which adds each flow in `requestheaders` right after a
        # script addon's hook: it must never see a credential either.
        spy = HeaderSpy()
        proxy.master.addons.add(spy)
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as http:
            answer = await http.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={"authorization": f"Bearer {tokens['bearer']}"},
            )
            assert answer.status_code == 200, answer.text
            # x-api-key is a credential header too (Anthropic's); the answer here does not matter.
            await http.get("/v1/models", headers={"x-api-key": tokens["x-api-key"]})
            check = await http.post("/token/check", json={"token": tokens["checked"]})
            assert check.status_code == 200, check.text
            assert check.json() == {"live": True}
        async with httpx.AsyncClient(proxy=proxy.regular_url, trust_env=False, timeout=30) as http:
            answer = await http.post(
                "http://localhost/v1/chat/completions",
                json=CHAT,
                headers={"authorization": f"Bearer {tokens['bearer']}"},
            )
            assert answer.status_code == 200, answer.text
        # The relay got every credential (the answers above prove it) and kept none.
        assert len(proxy.addon.credentials) == 0
        assert len(spy.seen) == 4
        for token in tokens.values():
            assert token not in repr(spy.seen)
    data = capture.read_bytes()
    with capture.open("rb") as f:
        flows = list(io.FlowReader(f).stream())
    # The client's four requests (and, with -w, the relay's own calls to Kimi, redacted).
    ours = [f for f in flows if f.request.path in CLIENT_PATHS]
    assert len(ours) == 4, [f.request.path for f in flows]
    for token in tokens.values():
        assert token.encode() not in data
    for flow in ours:
        assert "authorization" not in flow.request.headers
        assert "x-api-key" not in flow.request.headers
        assert "x-kimi-free-api-relay" not in flow.request.headers
        assert "x-kimi-free-api-credential" not in flow.request.headers
    for token in tokens.values():
        assert token not in caplog.text


async def test_mitmproxy_own_errors_are_openai_json(tmp_path, no_proxy_env):
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, regular=True, kimi_dialect="legacy") as proxy,
    ):
        host, port = proxy.url.removeprefix("http://").split(":")
        secret = "refresh-" + "s" * 40
        # Conflicting framing (a smuggling attempt): mitmproxy refuses it before any hook.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + secret.encode() + b"\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), raw
        assert b"content-type: application/json" in head.lower()
        error = json.loads(body)["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "malformed_request"
        assert secret.encode() not in raw
        # An upstream that cannot be reached (allowed, but nothing listens): 502 JSON.
        proxy.master.options.update(allow_private_urls=True)
        async with httpx.AsyncClient(proxy=proxy.regular_url, trust_env=False, timeout=30) as http:
            answer = await http.get("http://127.0.0.1:9/nothing-listens")
        assert_openai_error(answer, 502, "upstream_unreachable")


def test_error_body_never_echoes_mitmproxy_text():
    leaked = "Bad header value: Bearer refresh-secret"
    body = json.loads(error_body(400, leaked))
    assert "refresh-secret" not in json.dumps(body)
    assert body["error"]["code"] == "malformed_request"
    ours = json.loads(error_body(502, "Connection killed: kimi-free-api refuses to connect to x"))
    assert ours["error"]["code"] == "destination_refused"
    assert ours["error"]["message"] == "kimi-free-api refuses to connect to x"
    other = json.loads(error_body(418))
    assert other["error"]["type"] == "invalid_request_error"


def test_interception_listener_binds_to_loopback_unless_told_otherwise(monkeypatch):
    from addon.cli import build_parser, listen_modes

    monkeypatch.delenv("INTERCEPT_HOST", raising=False)
    args = build_parser().parse_args(["run", "--intercept-port", "8080"])
    assert args.host == "0.0.0.0"
    modes = listen_modes(args, "https://kimi.moonshot.cn")
    assert modes == ["reverse:https://kimi.moonshot.cn@8000", "regular@127.0.0.1:8080"]
    assert mode_specs.ProxyMode.parse(modes[1]).listen_host() == "127.0.0.1"
    args = build_parser().parse_args(
        ["run", "--intercept-port", "8080", "--intercept-host", "0.0.0.0"]
    )
    assert listen_modes(args, "https://kimi.moonshot.cn")[1] == "regular@0.0.0.0:8080"
    args = build_parser().parse_args(["run", "--intercept-port", "8080", "--intercept-host", "::1"])
    assert mode_specs.ProxyMode.parse(listen_modes(args, "x")[1]).listen_port() == 8080
    args = build_parser().parse_args(["run"])
    assert listen_modes(args, "https://kimi.moonshot.cn") == [
        "reverse:https://kimi.moonshot.cn@8000"
    ]


async def test_bad_credentials_answer_as_the_readme_says(tmp_path):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "| 401 `invalid_request_error` |" in readme
    assert "(code `invalid_api_key`)" in readme
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as http,
    ):
        unknown = await http.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-nobody-1234"}
        )
        body = assert_openai_error(unknown, 401, "invalid_api_key")
        assert body["error"]["type"] == "invalid_request_error"
        missing = await http.post("/v1/chat/completions", json=CHAT)
        body = assert_openai_error(missing, 401, "missing_token")
        assert body["error"]["type"] == "invalid_request_error"
