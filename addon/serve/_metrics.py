"""Prometheus metrics and the health probes: `GET /metrics`, `GET /healthz`, `GET /readyz`.

None of the three needs a token: a scraper or a load balancer has none, and nothing they show
is secret. Labels are bounded on purpose: the endpoint is the matched route (never the raw
path), the model is a catalog name or `other` (clients may send any string), an upstream error
kind is one of our error codes, and accounts are only counted by health (no label names an
account, so nothing about a token can show up in a time series).

The request metrics are fed by the relay's one-log-line-per-request middleware (`observe`); the
upstream ones by `KimiClient` (it is the `UpstreamObserver`); the gauges (accounts by health,
open streams, conversations pending deletion) are read from the pool and the store when scraped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from addon.accounts._pool import AccountPool
from translator.chat._models import MODEL_CATALOG

from ._reply import json_response

__all__ = ["Metrics", "RequestRecord", "add_health_routes"]

#: seconds; the first chunk usually comes within a few seconds, long answers take minutes
TTFT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 60.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)

_MODELS = frozenset(name for name, _ in MODEL_CATALOG)
_KIND = re.compile(r"[a-z0-9_]{1,40}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """What the relay knows about one finished request: the fields of its log line."""

    method: str
    path: str
    #: the matched route (`/v1/chat/completions`), or `other` for unknown URLs
    endpoint: str
    status: int
    model: str
    dialect: str
    #: the account's position among the accounts the credentials named (never an id or token)
    account: int | None
    #: seconds from the request to the first chunk written, for streamed answers
    ttfb: float | None
    duration: float
    upstream_calls: int
    failovers: int

    def text(self) -> str:
        """Today's text log line."""
        ttfb = "-" if self.ttfb is None else f"{self.ttfb * 1000:.0f}ms"
        account = "-" if self.account is None else self.account
        return (
            f"{self.method} {self.path} status={self.status} model={self.model} "
            f"dialect={self.dialect} account={account} ttfb={ttfb} "
            f"duration={self.duration * 1000:.0f}ms upstream_calls={self.upstream_calls} "
            f"failovers={self.failovers}"
        )

    def fields(self) -> dict[str, Any]:
        """The same fields for a JSON log line (milliseconds, None where the text says `-`)."""
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "model": None if self.model == "-" else self.model,
            "dialect": None if self.dialect == "-" else self.dialect,
            "account": self.account,
            "ttfb_ms": None if self.ttfb is None else round(self.ttfb * 1000),
            "duration_ms": round(self.duration * 1000),
            "upstream_calls": self.upstream_calls,
            "failovers": self.failovers,
        }


def endpoint_of(request: web.Request) -> str:
    """The route that served `request`, bounded: unknown URLs are all `other`.

    A route with a path parameter is labelled by its template (`/v1/responses/{id}`), which is
    as bounded as a plain path; only the catch-all (`/{tail}`, whose first segment is the
    parameter) stands for unknown URLs.
    """
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    if not isinstance(canonical, str) or canonical.startswith("/{"):
        return "other"
    return canonical


class Metrics:
    """The process's metrics, in a registry of its own (several proxies may share a process
    in tests; the global default registry would mix them)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._pools: list[_PoolCollector] = []
        self.requests = Counter(
            "kimi_free_api_requests",
            "Requests served, by endpoint, model and HTTP status (a streamed reply that failed "
            "after its first chunk counts with the status of its final error).",
            ("endpoint", "model", "status"),
            registry=registry,
        )
        self.ttft = Histogram(
            "kimi_free_api_time_to_first_token_seconds",
            "Seconds from the request to the first chunk of the answer.",
            ("endpoint",),
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "kimi_free_api_request_duration_seconds",
            "Seconds from the request to the last byte of the reply.",
            ("endpoint",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_calls = Counter(
            "kimi_free_api_upstream_calls",
            "Calls made to Kimi, streaming (answers) or unary (refresh, conversations, files).",
            ("type",),
            registry=registry,
        )
        self.upstream_errors = Counter(
            "kimi_free_api_upstream_errors",
            "Failed Kimi calls by kind: the OpenAI error code they became "
            "(rate_limit_exceeded, upstream_timeout, ...) or http_<status> for unary calls.",
            ("kind",),
            registry=registry,
        )

    # -- feeds ----------------------------------------------------------------------------------

    def observe(self, record: RequestRecord) -> None:
        """One finished request (called by the relay's log middleware)."""
        model = record.model if record.model in _MODELS or record.model == "-" else "other"
        self.requests.labels(record.endpoint, model, str(record.status)).inc()
        self.duration.labels(record.endpoint).observe(record.duration)
        if record.ttfb is not None:
            self.ttft.labels(record.endpoint).observe(record.ttfb)

    def upstream_call(self, *, streaming: bool) -> None:
        self.upstream_calls.labels("stream" if streaming else "unary").inc()

    def upstream_error(self, kind: str | None) -> None:
        kind = (kind or "").lower()
        self.upstream_errors.labels(kind if _KIND.fullmatch(kind) else "other").inc()

    def watch(self, pool: AccountPool) -> None:
        """Add the gauges read from `pool` (and its store) at scrape time."""
        self._pools.append(collector := _PoolCollector(pool))
        self.registry.register(collector)

    async def exposition(self) -> bytes:
        # The store is read (awaited) first: prometheus-client's collectors are synchronous.
        for collector in self._pools:
            await collector.read()
        return generate_latest(self.registry)


class _PoolCollector:
    """Accounts by health, open streams and pending deletions, read when scraped."""

    def __init__(self, pool: AccountPool) -> None:
        self.pool = pool
        self._counts: dict[str, int] = {}
        self._pending = 0

    async def read(self) -> None:
        """Read the store's numbers for the next `collect`."""
        self._counts = await self.pool.health_counts()
        self._pending = await self.pool.store.pending_deletion_count()

    def describe(self) -> list[Metric]:
        return []  # read from the store at scrape time: nothing to describe up front

    def collect(self) -> Iterator[Metric]:
        counts = self._counts
        accounts = GaugeMetricFamily(
            "kimi_free_api_accounts",
            "Accounts in the store by health (ok, cooling: resting after a rate limit, dead: "
            "Kimi rejected the token, disabled: turned off on the admin page).",
            labels=("health",),
        )
        for health in ("ok", "cooling", "dead", "disabled"):
            accounts.add_metric((health,), counts.get(health, 0))
        yield accounts
        yield GaugeMetricFamily(
            "kimi_free_api_open_streams",
            "Replies this process is serving from Kimi right now (account slots in use).",
            value=self.pool.total_in_flight(),
        )
        yield GaugeMetricFamily(
            "kimi_free_api_conversations_pending_deletion",
            "Kimi conversations the proxy created and will delete (after their TTL or a retry).",
            value=self._pending,
        )


def add_health_routes(
    app: web.Application,
    *,
    metrics: Metrics,
    pool: AccountPool,
    accounts_configured: Callable[[], bool],
) -> None:
    """`/healthz`, `/readyz` and `/metrics` (no token needed; nothing secret in them)."""

    async def healthz(request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        problems: list[str] = []
        try:
            await pool.store.check_writable()
        except Exception as exc:  # any store failure means "not ready", never a 500
            problems.append(f"the store is not writable: {type(exc).__name__}")
        else:
            if accounts_configured() and await pool.usable_count() == 0:
                problems.append(
                    "no configured account is usable (all dead, cooling down or disabled)"
                )
        if problems:
            return json_response({"status": "unavailable", "problems": problems}, 503)
        return json_response({"status": "ready"})

    async def metrics_page(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=await metrics.exposition(), headers={"content-type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
