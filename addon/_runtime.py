"""Everything the proxy runs besides mitmproxy: the relay server and its collaborators.

Built from a plain `RuntimeSettings` value (the addon maps mitmproxy options onto it), started
once the event loop runs, stopped on shutdown. Keeping this out of the addon class keeps the
addon a thin mitmproxy citizen, and lets tests and the benchmark run the relay on its own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web

from translator import KimiCall

from .accounts._pool import AccountPool, TokenGrant
from .accounts._refresh import refresh_grant
from .mitm._credentials import CredentialVault
from .process._config import Config, ConfigError
from .process._loop import LISTEN_BACKLOG
from .serve._admin import add_admin_routes, usage_recorder
from .serve._app import RELAY_SECRET_HEADER, build_app
from .serve._body import DEFAULT_MAX_REQUEST_BYTES
from .serve._metrics import Metrics, add_health_routes
from .serve._usage import UsageLog
from .store._pg import open_store
from .store._store import Account, Store
from .upstream._aiohttp_transport import AiohttpTransport
from .upstream._chat import ChatService, ChatSettings
from .upstream._conversations import ConversationKeeper
from .upstream._dialects import Dialect, choose_dialect
from .upstream._fetch import Fetcher, FetchPolicy, make_fetch_client
from .upstream._kimi import KimiClient
from .upstream._model_catalog import ModelCatalogs
from .upstream._upload import Uploader

__all__ = [
    "LIVE_OPTIONS",
    "RELAY_HEADER_LIMIT",
    "RELAY_SECRET_HEADER",
    "Runtime",
    "RuntimeSettings",
]

#: options in the config file's `options:` that a reload applies without a restart
LIVE_OPTIONS = frozenset({"max_account_concurrency", "account_cooldown"})

log = logging.getLogger("kimi_free_api")

#: The relay's parser limits for the request line and each header (aiohttp's default is 8190,
#: less than `Authorization: Bearer T1,…,T20` with twenty real tokens). The addon refuses
#: anything over its own, lower limits with a JSON error before it reaches the relay, because
#: aiohttp's own refusal is a plain-text 400 that echoes the header.
RELAY_HEADER_LIMIT = 256 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeSettings:
    kimi_base_url: str = "https://kimi.moonshot.cn"
    dialect: str = "auto"
    store_path: str = "~/.kimi-free-api/accounts.sqlite3"
    conversation_ttl: float = 600.0
    auto_continue: bool = True
    precreate: int = 1
    allow_private_urls: bool = False
    max_file_bytes: int = 100 * 1024 * 1024
    file_parse_timeout: float = 30.0
    max_account_concurrency: int = 5
    account_cooldown: float = 60.0
    keepalive_interval: float = 15.0
    stream_flush_interval: float = 0.025
    stall_timeout: float = 120.0
    refresh_path: str = "/api/auth/token/refresh"
    #: what carries the Kimi calls: "aiohttp" (HTTP/1.1, C parser) or "httpx" (httpcore, HTTP/2)
    http_client: str = "aiohttp"
    #: the largest request body, before and after gzip/deflate decoding
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: TLS verification for Kimi: True, False, or a CA bundle path (tests, the demo's fake)
    verify: bool | str | ssl.SSLContext = True
    config: Config = field(default_factory=Config)


class Runtime:
    def __init__(
        self, settings: RuntimeSettings, *, credentials: CredentialVault | None = None
    ) -> None:
        self.settings = settings
        #: client credentials the addon took out of flows, by handle (addon/mitm/_credentials.py)
        self.credentials = credentials if credentials is not None else CredentialVault()
        self.secret = secrets.token_urlsafe(32)
        self.base_url = ""
        self.ready = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.client: httpx.AsyncClient | None = None
        #: the Kimi client, once started (its `recorder` makes Kimi calls visible as flows)
        self.kimi: KimiClient | None = None
        self.fetch_client: httpx.AsyncClient | None = None
        self.keeper: ConversationKeeper | None = None
        self.store: Store | None = None
        self.pool: AccountPool | None = None
        self.metrics = Metrics()
        #: the last day of requests, for the admin page
        self.usage = UsageLog(time.time)
        #: the config in force (replaced by a reload)
        self.config = settings.config

    async def start(self) -> str:
        s = self.settings
        timeout = httpx.Timeout(connect=10.0, read=s.stall_timeout, write=30.0, pool=30.0)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        transport: AiohttpTransport | None = None
        if s.http_client == "aiohttp":
            # aiohttp's client under httpx's: HTTP/1.1 parsed in C, a pool per host; about half
            # the CPU of httpcore per streamed chunk (addon/upstream/_aiohttp_transport.py).
            transport = AiohttpTransport(verify=_tls_context(s.verify), max_connections=1000)
            self.client = httpx.AsyncClient(
                transport=transport,
                timeout=timeout,
                follow_redirects=False,
                trust_env=False,
            )
        else:
            # HTTP/2 where Kimi offers it (ALPN), keep-alive always: no handshake per request
            # after warm-up. (The h2 package comes with mitmproxy.)
            self.client = httpx.AsyncClient(
                timeout=timeout,
                limits=limits,
                verify=_tls_context(s.verify),
                follow_redirects=False,
                trust_env=False,
                http2=True,
            )
        # Kimi calls go straight to aiohttp's transport (`KimiClient._dispatch`); httpx's own
        # stack (HTTP/2) goes through the client.
        self.kimi = kimi = KimiClient(self.client, s.kimi_base_url, transport=transport)
        kimi.observer = self.metrics
        self.store = store = await open_store(s.store_path)

        async def refresh(refresh_token: str) -> TokenGrant:
            return await refresh_grant(kimi, refresh_token, path=s.refresh_path)

        pool = AccountPool(
            store,
            refresh=refresh,
            clock=time.time,
            max_concurrency=s.max_account_concurrency,
            cooldown=s.account_cooldown,
        )
        self.pool = pool
        self.metrics.watch(pool)
        await pool.apply_config(s.config)
        for warning in s.config.warnings:
            log.warning("config: %s", warning)

        def dialect_for(account: Account) -> Dialect:
            return choose_dialect(s.dialect, s.kimi_base_url, account.view.dialect)

        self.keeper = keeper = ConversationKeeper(
            kimi=kimi,
            pool=pool,
            store=store,
            dialect_for=dialect_for,
            conversation_ttl=s.conversation_ttl,
            clock=time.time,
            precreate=s.precreate,
        )
        policy = FetchPolicy(allow_private=s.allow_private_urls, max_bytes=s.max_file_bytes)
        # Its own client: cookies of fetched servers must not land in the Kimi client's jar.
        self.fetch_client = make_fetch_client(policy)
        fetcher = Fetcher(self.fetch_client, policy)

        async def no_default_execute(call: KimiCall) -> httpx.Response:
            raise AssertionError("uploads always pass the account's own executor")

        uploader = Uploader(
            client=self.client,
            execute=no_default_execute,
            fetcher=fetcher,
            parse_timeout=s.file_parse_timeout,
        )
        # Connect: model names (and /v1/models when Connect is the dialect) follow Kimi's own
        # catalog (GetAvailableModels)
        catalogs = ModelCatalogs(kimi, pool, clock=time.monotonic)
        connect = choose_dialect(s.dialect, s.kimi_base_url).name == "connect"
        chat = ChatService(
            catalogs=catalogs,
            kimi=kimi,
            pool=pool,
            keeper=keeper,
            uploader=uploader,
            settings=ChatSettings(
                base_url=s.kimi_base_url,
                dialect=s.dialect,
                conversation_ttl=s.conversation_ttl,
                keepalive_interval=s.keepalive_interval,
                stream_flush_interval=s.stream_flush_interval,
                stall_timeout=s.stall_timeout,
                auto_continue=s.auto_continue,
            ),
            wall_clock=time.time,
            monotonic=time.monotonic,
        )
        app = build_app(
            secret=self.secret,
            chat=chat,
            pool=pool,
            wall_clock=time.time,
            metrics=self.metrics,
            catalogs=catalogs if connect else None,
            on_request=[usage_recorder(pool, self.usage)],
            routes=[
                lambda app: add_admin_routes(
                    app,
                    pool=pool,
                    usage=self.usage,
                    reapply=lambda: pool.apply_config(self.config),
                    delete_due=keeper.delete_due,
                ),
                lambda app: add_health_routes(
                    app,
                    metrics=self.metrics,
                    pool=pool,
                    accounts_configured=lambda: bool(self.config.accounts),
                )
            ],
            credentials=self.credentials,
            max_request_bytes=s.max_request_bytes,
        )
        # handler_cancellation: a client that hangs up cancels its handler, which stops the
        # Kimi stream at once and hands the conversation to the keeper for deletion.
        # shutdown_timeout: replies still running at shutdown get 2 s, then are cancelled (their
        # conversations are deleted with the rest): a stop must finish within its bound.
        # auto_decompress off: addon/serve/_body.py inflates request bodies within the size limit.
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=2.0,
            auto_decompress=False,
            max_line_size=RELAY_HEADER_LIMIT,
            max_field_size=RELAY_HEADER_LIMIT,
            max_headers=512,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=LISTEN_BACKLOG)
        await site.start()
        server = site._server
        assert server is not None
        # asyncio.Server or uvloop's Server (addon/process/_loop.py): both list their sockets
        sockets = server.sockets  # type: ignore[attr-defined]
        port = sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        keeper.start()
        self.ready.set()
        return self.base_url

    async def apply_config(self, config: Config) -> None:
        """Take a reloaded config: accounts, gateway keys, `require_key`, `admin_key`, and the
        options that can change live (`LIVE_OPTIONS`). Requests in flight keep their account.
        Other changed options are named in a warning: they need a restart."""
        pool = self.pool
        if pool is None:
            raise RuntimeError("the runtime is not started")
        options = config.options
        concurrency = _live_number(options, "max_account_concurrency", pool.max_concurrency, 1)
        cooldown = _live_number(options, "account_cooldown", pool.cooldown, 0)
        await pool.apply_config(config)
        pool.max_concurrency = int(concurrency)
        pool.cooldown = float(cooldown)
        old = self.config.options
        later = sorted(
            name
            for name in set(old) | set(options)
            if name not in LIVE_OPTIONS and old.get(name) != options.get(name)
        )
        if later:
            log.warning("config: changed options take effect after a restart: %s", ", ".join(later))
        self.config = config

    async def stop(self) -> None:
        """Stop within about 10 s: running replies end (2 s), then every conversation this
        process holds is deleted (8 s at most; what is left stays queued for the next start)."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self.keeper is not None:
            await self.keeper.shutdown(timeout=8.0)
        if self.client is not None:
            await self.client.aclose()
        if self.fetch_client is not None:
            await self.fetch_client.aclose()
        if self.store is not None:
            await self.store.close()


def _live_number(options: Mapping[str, Any], name: str, current: float, minimum: int) -> float:
    """The reloaded value of a live numeric option (the current one when it is not given).

    Raises:
        ConfigError: not a number, or below `minimum`.
    """
    value = options.get(name, current)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"options.{name}: must be a number >= {minimum}")
    return value


def _tls_context(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx deprecates CA bundle paths for `verify`: turn one into an SSL context."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify
