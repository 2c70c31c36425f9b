"""Interception mode: a client that keeps `https://api.openai.com/v1` gets Kimi's answer through
mitmproxy as a regular proxy, offline, and nothing but our relay is ever dialled for it."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def ask_through_interception(proxy_url: str, ca: Path, text: str) -> Any:
    """The openai SDK with its default base URL (api.openai.com) through the interception proxy
    at `proxy_url`, trusting mitmproxy's CA `ca`: the completion, validated, echoing `text`."""
    trust = ssl.create_default_context(cafile=str(ca))
    http = httpx.AsyncClient(proxy=proxy_url, verify=trust, trust_env=False, timeout=20)
    async with openai.AsyncOpenAI(
        api_key="refresh-intercepted", http_client=http, max_retries=0
    ) as sdk:
        assert str(sdk.base_url).startswith("https://api.openai.com")
        completion = await sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": text}]
        )
    assert_valid("openai.response", completion.to_dict())
    assert text in (completion.choices[0].message.content or "")
    return completion


async def test_openai_sdk_with_default_base_url_is_answered_by_kimi(tmp_path, no_proxy_env):
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, regular=True, kimi_dialect="legacy") as proxy,
    ):
        assert proxy.regular_url is not None
        completion = await ask_through_interception(
            proxy.regular_url, proxy.ca_cert, "intercepted hello"
        )
        # The client's name for the model is echoed; Kimi got the default model.
        assert completion.model == "gpt-4o"
        completions = [r for r in fake.record.requests if r.path.endswith("/completion/stream")]
        assert len(completions) == 1


async def test_other_hosts_are_not_answered_and_intercepted_hosts_never_dialled(
    tmp_path, no_proxy_env
):
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, regular=True, kimi_dialect="legacy") as proxy,
    ):
        addon = proxy.addon
        # The fail-closed guard: even if routing failed, api.openai.com is refused.
        from mitmproxy import connection
        from mitmproxy.proxy import mode_specs, server_hooks

        client = connection.Client(
            peername=("127.0.0.1", 1),
            sockname=("127.0.0.1", 2),
            timestamp_start=0,
            proxy_mode=mode_specs.ProxyMode.parse("regular"),
        )
        server = connection.Server(address=("api.openai.com", 443))
        await addon.server_connect(
            server_hooks.ServerConnectionHookData(server=server, client=client)
        )
        assert server.error
        assert "refuses" in server.error
        # In reverse mode only the relay may be dialled.
        reverse_client = connection.Client(
            peername=("127.0.0.1", 1),
            sockname=("127.0.0.1", 2),
            timestamp_start=0,
            proxy_mode=mode_specs.ProxyMode.parse(f"reverse:{fake.base_url}"),
        )
        elsewhere = connection.Server(address=("example.com", 443))
        await addon.server_connect(
            server_hooks.ServerConnectionHookData(server=elsewhere, client=reverse_client)
        )
        assert elsewhere.error
        relay = connection.Server(address=addon.relay_address)
        await addon.server_connect(
            server_hooks.ServerConnectionHookData(server=relay, client=reverse_client)
        )
        assert relay.error is None
