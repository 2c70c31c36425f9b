"""End to end: /healthz, /readyz and /metrics through a real mitmproxy against the fake Kimi.

None of them needs a token; /metrics is Prometheus' text format (parsed with prometheus-client's
own parser) and never names an account or carries a token.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

TOKEN_A = "rt-metrics-a-5b9e1c7d2f"
TOKEN_B = "rt-metrics-b-8d2a6f4c1e"
CONFIGURED = "rt-metrics-configured-3c8e"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def chat(http: httpx.AsyncClient, url: str, token: str, *, stream: bool) -> httpx.Response:
    body = {"model": "kimi", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    return await http.post(
        url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}
    )


async def test_health_probes_need_no_token(tmp_path):
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
        httpx.AsyncClient(timeout=10) as http,
    ):
        health = await http.get(proxy.url + "/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        ready = await http.get(proxy.url + "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready"}


async def test_readyz_is_503_when_every_configured_account_is_dead(tmp_path):
    config = tmp_path / "kimi.yaml"
    config.write_text(f"accounts:\n  - label: only\n    refresh_token: {CONFIGURED}\n")
    config.chmod(0o600)
    dead = Scenario.of(Fault(kind="dead_refresh", match="refresh"))
    async with (
        FakeKimi(dialect_routes="legacy", scenario=dead) as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", kimi_config=str(config)
        ) as proxy,
        httpx.AsyncClient(timeout=10) as http,
    ):
        before = await http.get(proxy.url + "/readyz")
        assert before.status_code == 200, before.text
        # Without a gateway key, a configured account is named by its token.
        failed = await chat(http, proxy.url, CONFIGURED, stream=False)
        assert failed.status_code == 401
        assert_valid("openai.error", failed.json())
        after = await http.get(proxy.url + "/readyz")
        assert after.status_code == 503
        body = after.json()
        assert body["status"] == "unavailable"
        assert "no configured account is usable" in body["problems"][0]
        assert CONFIGURED not in after.text


async def test_readyz_is_503_when_the_store_cannot_be_written(tmp_path):
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
        httpx.AsyncClient(timeout=10) as http,
    ):
        store = proxy.addon.runtime.store
        assert store is not None
        await store.close()  # a closed connection fails like a lost disk would
        ready = await http.get(proxy.url + "/readyz")
        assert ready.status_code == 503
        assert "store is not writable" in ready.json()["problems"][0]


async def test_metrics_count_requests_upstream_calls_errors_and_accounts(tmp_path):
    rate_limited = Scenario.of(
        Fault(kind="http_status", match="completion", status=429, token=TOKEN_A)
    )
    async with (
        FakeKimi(dialect_routes="legacy", scenario=rate_limited) as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        ok = await chat(http, proxy.url, TOKEN_B, stream=True)
        assert ok.status_code == 200
        limited = await chat(http, proxy.url, TOKEN_A, stream=False)
        assert limited.status_code == 429
        again = await chat(http, proxy.url, TOKEN_B, stream=False)
        assert again.status_code == 200
        await http.get(proxy.url + "/no/such/path/1234")

        resp = await http.get(proxy.url + "/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        got = samples(resp.text)

        def value(name: str, **labels: str) -> float:
            return got.get((name, tuple(sorted(labels.items()))), 0.0)

        completions = "/v1/chat/completions"
        assert value("kimi_free_api_requests_total", endpoint=completions, model="kimi",
                     status="200") == 2
        assert value("kimi_free_api_requests_total", endpoint=completions, model="kimi",
                     status="429") == 1
        assert value("kimi_free_api_requests_total", endpoint="other", model="-",
                     status="404") == 1
        assert value("kimi_free_api_request_duration_seconds_count", endpoint=completions) == 3
        # only answered requests have a first token
        assert value("kimi_free_api_time_to_first_token_seconds_count", endpoint=completions) == 2
        assert value("kimi_free_api_upstream_calls_total", type="stream") == 3
        assert value("kimi_free_api_upstream_calls_total", type="unary") >= 2  # refreshes
        assert value("kimi_free_api_upstream_errors_total", kind="rate_limit_exceeded") == 1
        assert value("kimi_free_api_accounts", health="cooling") == 1
        assert value("kimi_free_api_accounts", health="ok") == 1
        assert value("kimi_free_api_accounts", health="dead") == 0
        assert value("kimi_free_api_open_streams") == 0
        # the TTL keeps both answered conversations until it runs out
        assert value("kimi_free_api_conversations_pending_deletion") >= 1
        # nothing names an account or holds a token
        store = proxy.addon.runtime.store
        for secret in (TOKEN_A, TOKEN_B, *(a.id for a in await store.list_accounts())):
            assert secret not in resp.text
        for account in fake.accounts.values():
            assert account.current_refresh_token not in resp.text


async def test_metrics_model_label_is_bounded(tmp_path):
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        body = {"model": "made-up-model-9", "messages": [{"role": "user", "content": "hi"}]}
        resp = await http.post(
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {TOKEN_A}"},
        )
        assert resp.status_code == 200
        text = (await http.get(proxy.url + "/metrics")).text
        assert "made-up-model-9" not in text
        assert (
            'kimi_free_api_requests_total{endpoint="/v1/chat/completions",model="other",'
            'status="200"} 1.0' in text
        )

