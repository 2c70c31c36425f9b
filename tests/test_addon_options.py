"""The mitmproxy addon's own behaviour, with mitmproxy's test helpers (no sockets): options are
checked at start, and the hooks fail closed."""

from __future__ import annotations

import json

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import mode_specs
from mitmproxy.test import taddons, tflow, tutils

from addon.kimi_proxy import KimiProxy
from tests.schema_check import assert_valid


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("kimi_base_url", "ftp://kimi.example", r"an http\(s\) URL"),
        ("kimi_dialect", "grpc", "kimi_dialect must be one of"),
        ("conversation_ttl", -1, "conversation_ttl must be >= 0"),
        ("max_account_concurrency", 0, "max_account_concurrency must be >= 1"),
        ("file_parse_timeout", 0, "file_parse_timeout must be >= 1"),
        ("stream_large_bodies", "1k", "refuses stream_large_bodies"),
        ("connection_strategy", "eager", "connection_strategy=lazy"),
    ],
)
async def test_bad_options_stop_the_start_with_a_clear_message(option, value, says):
    addon = KimiProxy()
    with (
        taddons.context(Proxyserver(), addon) as tctx,
        pytest.raises(exceptions.OptionsError, match=says),
    ):
        tctx.configure(addon, **{option: value})


async def test_load_forces_lazy_connections():
    addon = KimiProxy()
    with taddons.context(Proxyserver(), addon) as tctx:
        assert tctx.options.connection_strategy == "lazy"


async def test_a_broken_config_file_is_an_options_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("accounts: [{label: a}]\nsurprise: 1\n")
    addon = KimiProxy()
    with taddons.context(Proxyserver(), addon) as tctx, pytest.raises(exceptions.OptionsError):
        tctx.configure(addon, kimi_config=str(config))


async def test_config_options_section_sets_addon_options(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("options:\n  conversation_ttl: 42\n")
    addon = KimiProxy()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, kimi_config=str(config))
        assert tctx.options.conversation_ttl == 42


async def test_the_reverse_target_is_the_kimi_base_url_unless_set():
    addon = KimiProxy()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, mode=["reverse:https://www.kimi.com"])
        assert addon.base_url == "https://www.kimi.com"
        tctx.configure(addon, kimi_base_url="https://kimi.example.org/")
        assert addon.base_url == "https://kimi.example.org"


async def test_request_hook_fails_closed_when_the_relay_is_not_running():
    addon = KimiProxy()
    with taddons.context(Proxyserver(), addon):
        flow = tflow.tflow(req=tutils.treq(host="api.openai.com", port=443, path="/v1/models"))
        await addon.request(flow)
    assert flow.response is not None
    assert flow.response.status_code == 500
    assert_valid("openai.error", json.loads(flow.response.content or b""))


async def test_other_hosts_in_regular_mode_pass_untouched():
    addon = KimiProxy()
    with taddons.context(Proxyserver(), addon):
        flow = tflow.tflow(req=tutils.treq(host="example.org", port=443, path="/"))
        flow.client_conn.proxy_mode = mode_specs.ProxyMode.parse("regular")
        await addon.request(flow)
    assert flow.response is None
    assert flow.request.host == "example.org"


async def test_sse_replies_from_the_relay_are_streamed():
    addon = KimiProxy()
    with taddons.context(Proxyserver(), addon):
        flow = tflow.tflow(
            resp=tutils.tresp(headers=[(b"content-type", b"text/event-stream")], content=None)
        )
        flow.metadata["kimi_free_api"] = True
        addon.responseheaders(flow)
        assert flow.response is not None
        assert flow.response.stream is True
        plain = tflow.tflow(resp=tutils.tresp(headers=[(b"content-type", b"text/event-stream")]))
        addon.responseheaders(plain)  # not a flow we routed
        assert plain.response is not None
        assert plain.response.stream is False
