"""One measured phase: `completions` streamed completions by `concurrency` workers through one
client kind, after an untimed warm-up (one completion per worker: opens the keep-alive
connections and, for the proxy, refreshes each account's token and pre-creates its spare
conversation, as a running proxy would have done long before).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from fixtures.fake_kimi import FakeKimi
from translator import ModelFlags
from translator.legacy._calls import create_conversation_call

from ._clients import Sample, limit_once, raw_once, sdk_once
from ._deletes import phase_conversations
from ._proxy import ProxyHandle
from ._stats import read_process, reset_peak_rss, summary_ms

__all__ = ["Env", "delete_limit_conversations", "run_phase"]

One = Callable[[int], Awaitable[Sample]]


@dataclass
class Env:
    fake: FakeKimi
    proxy: ProxyHandle
    client_tls: ssl.SSLContext | None
    prompt: str
    rtt: float
    deadline: float  # time.monotonic() after which phases stop
    #: the refresh tokens' prefix: `<prefix>-0` ... per worker, `<prefix>-limit` for the limit.
    #: Each run (one per conversation TTL) has its own, since the fake rotates refresh tokens.
    token_prefix: str = "bench"
    access_token: str = ""
    conversations: list[str] = field(default_factory=list)
    #: each proxy phase's result and the conversations its measured completions used; their
    #: deletions are counted once the proxy has stopped (bench._deletes)
    used: list[tuple[dict[str, Any], set[str]]] = field(default_factory=list)


def _client(env: Env, concurrency: int, *, upstream: bool) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8
    )
    return httpx.AsyncClient(
        verify=env.client_tls if upstream and env.client_tls is not None else True,
        limits=limits,
        timeout=httpx.Timeout(60.0),
        trust_env=False,  # loopback only: never through an HTTP(S)_PROXY from the environment
    )


async def _limit_setup(env: Env, http: httpx.AsyncClient, concurrency: int) -> None:
    """One token refresh and one conversation per worker, untimed: the limit measures only the
    stream call on an existing conversation."""
    base = env.fake.base_url
    if not env.access_token:
        resp = await http.get(
            base + "/api/auth/token/refresh",
            headers={"authorization": f"Bearer {env.token_prefix}-limit"},
        )
        resp.raise_for_status()
        env.access_token = resp.json()["access_token"]
    call = create_conversation_call(ModelFlags())
    gate = asyncio.Semaphore(50)

    async def create() -> str:
        async with gate:
            resp = await http.post(
                base + call.path,
                json=call.json,
                headers={"authorization": f"Bearer {env.access_token}"},
            )
            resp.raise_for_status()
            return str(resp.json()["id"])

    missing = concurrency - len(env.conversations)
    if missing > 0:
        env.conversations += await asyncio.gather(*(create() for _ in range(missing)))


async def _settle(fake: FakeKimi, rtt: float, concurrency: int, limit: float = 20.0) -> None:
    """Wait until the proxy's background calls (spare conversations) are answered and quiet."""
    # Under load the proxy answers late: the more streams, the longer the quiet spell required.
    quiet_for = 3 * rtt + 0.1 + 0.002 * concurrency
    deadline = time.monotonic() + limit
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        requests = fake.record.requests
        pending = any(r.status is None for r in requests[-2000:])
        if len(requests) != seen or pending:
            seen, since = len(requests), time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return
        await asyncio.sleep(0.02)


async def _drive(concurrency: int, completions: int, one: One, samples: list[Sample]) -> None:
    remaining = [completions]

    async def worker(index: int) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            samples.append(await one(index))

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def run_phase(env: Env, kind: str, concurrency: int, completions: int) -> dict[str, Any]:
    http = _client(env, concurrency, upstream=kind == "limit")
    try:
        if kind == "limit":
            await _limit_setup(env, http, concurrency)
            base, token, convs = env.fake.base_url, env.access_token, env.conversations

            async def one(i: int) -> Sample:
                return await limit_once(http, base, token, convs[i], env.prompt)

        elif kind == "raw":

            async def one(i: int) -> Sample:
                return await raw_once(http, env.proxy.url, f"{env.token_prefix}-{i}", env.prompt)

        elif kind == "relay":
            # raw, straight to the relay with the headers mitmproxy would add: the proxy's
            # cost without its pass through mitmproxy (docs/benchmarks.md, the hop's cost)
            relay_url, relay_headers = await env.proxy.relay()

            async def one(i: int) -> Sample:
                token = f"{env.token_prefix}-{i}"
                return await raw_once(http, relay_url, token, env.prompt, relay_headers)

        elif kind == "sdk":
            import openai

            base_sdk = openai.AsyncOpenAI(
                base_url=env.proxy.url + "/v1", api_key="unused", max_retries=0, http_client=http
            )
            sdks = [
                base_sdk.with_options(api_key=f"{env.token_prefix}-{i}") for i in range(concurrency)
            ]

            async def one(i: int) -> Sample:
                return await sdk_once(sdks[i], env.prompt)

        else:
            raise ValueError(f"unknown client kind {kind!r}")
        return await _measure(env, kind, concurrency, completions, one)
    finally:
        await http.aclose()


async def _measure(
    env: Env, kind: str, concurrency: int, completions: int, one: One
) -> dict[str, Any]:
    budget = env.deadline - time.monotonic()
    if budget <= 0:
        raise TimeoutError("the benchmark's time budget is used up")
    async with asyncio.timeout(budget):
        warm: list[Sample] = []
        await _drive(concurrency, concurrency, one, warm)
        if kind != "limit":
            await _settle(env.fake, env.rtt, concurrency)
        before_proxy = await env.proxy.snap()
        reset_peak_rss()
        before = read_process()
        first_request = len(env.fake.record.requests)
        samples: list[Sample] = []
        start = time.perf_counter()
        await _drive(concurrency, completions, one, samples)
        wall = time.perf_counter() - start
        after = read_process()
        upstream = env.fake.record.requests[first_request:]
        after_proxy = await env.proxy.snap()
    result = _summarise(
        kind, concurrency, samples, wall, before, after, before_proxy, after_proxy, upstream, env
    )
    if kind != "limit":
        env.used.append((result, phase_conversations(upstream)))
    return result


def _summarise(
    kind: str,
    concurrency: int,
    samples: list[Sample],
    wall: float,
    before: Any,
    after: Any,
    before_proxy: dict[str, Any],
    after_proxy: dict[str, Any],
    upstream: list[Any],
    env: Env,
) -> dict[str, Any]:
    good = [s for s in samples if s.ok and s.ttft > 0]
    errors = collections.Counter(s.error or "no answer text" for s in samples if s not in good)
    n = max(1, len(samples))
    chunks = sum(s.chunks for s in good)
    per_1k = 1000 / n
    bench_cpu = after.cpu_s - before.cpu_s
    result: dict[str, Any] = {
        "client": kind,
        "concurrency": concurrency,
        "completions": len(samples),
        "ok": len(good),
        "errors": dict(errors),
        "wall_s": round(wall, 3),
        "ttft_ms": summary_ms([s.ttft for s in good]),
        "ttfb_ms": summary_ms([s.ttfb for s in good]),
        "total_ms": summary_ms([s.total for s in good]),
        "chunks_per_completion": round(chunks / max(1, len(good)), 2),
        "chunks_per_s": round(chunks / wall, 1) if wall else 0.0,
        "upstream_calls_per_completion": round(len(upstream) / n, 3),
        "upstream_routes": dict(collections.Counter(r.route for r in upstream)),
        "cpu_s_per_1k": {"bench_process": round(bench_cpu * per_1k, 3)},
        "peak_rss_mb": {"bench_process": after.peak_rss_mb},
    }
    if kind == "limit":
        result["critical_path_calls_per_completion"] = 1.0
        result["cpu_s_per_1k"]["total"] = result["cpu_s_per_1k"]["bench_process"]
        result["peak_rss_mb"]["total"] = after.peak_rss_mb
        return result
    logged = after_proxy["requests"]
    calls = [c for _, c, _ in logged]
    result["critical_path_calls_per_completion"] = round(sum(calls) / max(1, len(calls)), 3)
    result["critical_path_calls_max"] = max(calls, default=0)
    result["proxy_logged_requests"] = len(logged)
    relay_ttfb = [t / 1000 for _, _, t in logged if t is not None]
    result["relay_ttfb_ms"] = summary_ms(relay_ttfb)
    if env.proxy.separate_process:
        proxy_cpu = after_proxy["cpu_s"] - before_proxy["cpu_s"]
        result["cpu_s_per_1k"]["proxy_process"] = round(proxy_cpu * per_1k, 3)
        result["cpu_s_per_1k"]["total"] = round((bench_cpu + proxy_cpu) * per_1k, 3)
        result["peak_rss_mb"]["proxy_process"] = after_proxy["peak_rss_mb"]
        result["peak_rss_mb"]["total"] = round(after.peak_rss_mb + after_proxy["peak_rss_mb"], 1)
    else:
        result["cpu_s_per_1k"]["total"] = result["cpu_s_per_1k"]["bench_process"]
        result["peak_rss_mb"]["total"] = after.peak_rss_mb
    return result


async def delete_limit_conversations(env: Env) -> None:
    """The limit's conversations are the benchmark's own: delete them (the proxy deletes its)."""
    if not env.conversations:
        return
    async with httpx.AsyncClient(verify=env.client_tls or True, trust_env=False) as http:
        gate = asyncio.Semaphore(20)

        async def delete(conversation_id: str) -> None:
            async with gate:
                await http.delete(
                    f"{env.fake.base_url}/api/chat/{conversation_id}",
                    headers={"authorization": f"Bearer {env.access_token}"},
                )

        await asyncio.gather(*(delete(c) for c in env.conversations))
    env.conversations.clear()
