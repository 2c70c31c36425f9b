"""The mitmproxy addon: `mitmdump -s addon/kimi_proxy.py --mode reverse:https://kimi.moonshot.cn`.

It routes the requests it serves to the loopback relay (addon/_runtime.py) and lets mitmproxy
stream the relay's answer back. It never translates anything itself, and it fails closed: an
error in a hook answers the client with an OpenAI-style error instead of letting the request
go on unchanged (in interception mode that would send the client's OpenAI key to OpenAI).

Modes:
- reverse (`--mode reverse:<kimi base url>`): every request is ours.
- regular (`--mode regular`, clients set HTTPS_PROXY and trust mitmproxy's CA): requests to the
  `intercept_hosts` (api.openai.com by default) are answered through Kimi; other hosts pass
  through untouched, except loopback, private and link-local destinations (unless
  `allow_private_urls`): a proxy reachable from the LAN must not be a door to them.

Host names are compared normalised (addon/mitm/_hosts.py), so `api.openai.com.` is intercepted too.
Client credentials never stay in a flow (addon/mitm/_credentials.py), and mitmproxy's own error
pages are OpenAI JSON (addon/mitm/_errors.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

if __name__ != "addon.kimi_proxy":
    # Loaded as a script (`mitmdump -s addon/kimi_proxy.py` names it
    # `__mitmproxy_script__.kimi_proxy`): import the sibling modules of THIS file, also from a
    # clone that was never pip-installed, and never a different installed copy.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.connection import Server
from mitmproxy.proxy import mode_specs, server_hooks

from addon._runtime import RELAY_SECRET_HEADER, Runtime, RuntimeSettings
from addon.capture._upstream_flows import UpstreamFlows, keep_streamed_body
from addon.mitm import _errors as _mitm_errors
from addon.mitm._credentials import (
    CREDENTIAL_HANDLE_HEADER,
    CREDENTIAL_HEADERS,
    CredentialVault,
    HeldBody,
)
from addon.mitm._hosts import normalise_host, normalise_hosts
from addon.process._config import Config, ConfigError, load_config
from addon.process._reload import ConfigReloader
from addon.serve._body import DEFAULT_MAX_REQUEST_BYTES
from addon.serve._ratelimit import CLIENT_ADDRESS_HEADER
from addon.upstream._fetch import refusal_reason, system_resolver

__all__ = ["KimiProxy", "addons"]

log = logging.getLogger("kimi_free_api")

DIALECTS = ("auto", "legacy", "connect")
#: default of the stream_flush_ms option (docs/benchmarks.md measures it)
STREAM_FLUSH_MS = 25
METADATA_KEY = "kimi_free_api"
#: where the client sent a request (scheme, host, port), shown instead of the loopback relay
CLIENT_TARGET_KEY = "kimi_free_api_client_target"

#: flow.metadata key of the vault handle for this flow's credentials (opaque, single use)
HANDLE_KEY = "kimi_free_api_handle"

#: Request header limits, checked before the relay sees the request: one header (name and
#: value) of at most 32 KiB (`Authorization: Bearer T1,…,T20` with twenty real tokens is about
#: 9 KB), 64 KiB of headers in all, at most 100 headers, and a URL of at most 16 KiB.
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS_BYTES = 64 * 1024
MAX_HEADER_COUNT = 100
MAX_URL_BYTES = 16 * 1024
_FORBIDDEN_IN_HEADERS = (b"\x00", b"\r", b"\n")


def _error_body(status: int, message: str, code: str, type_: str = "server_error") -> bytes:
    error = {"message": message, "type": type_, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _json_error(status: int, message: str, code: str, type_: str) -> http.Response:
    return http.Response.make(
        status, _error_body(status, message, code, type_), {"content-type": "application/json"}
    )


def header_problem(
    request: http.Request, *, extra: Sequence[tuple[str, str]] = ()
) -> tuple[int, str, str] | None:
    """(status, message, code) when the request's head is beyond the relay's limits (`extra`:
    headers already taken out of it). The message never quotes a header: a header that is too
    large may well hold a token."""
    if len(request.path.encode("utf-8", "surrogateescape")) > MAX_URL_BYTES:
        return 414, f"the request URL is longer than {MAX_URL_BYTES} bytes", "url_too_long"
    fields = [
        *request.headers.fields,
        *(
            (n.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
            for n, v in extra
        ),
    ]
    if len(fields) > MAX_HEADER_COUNT:
        return 431, f"the request has more than {MAX_HEADER_COUNT} headers", "too_many_headers"
    total = 0
    for name, value in fields:
        size = len(name) + len(value)
        total += size
        if size > MAX_HEADER_BYTES:
            return (
                431,
                f"a request header is larger than {MAX_HEADER_BYTES} bytes",
                "header_too_large",
            )
        if any(c in name or c in value for c in _FORBIDDEN_IN_HEADERS):
            return 400, "a request header contains a NUL, CR or LF character", "invalid_header"
    if total > MAX_HEADERS_BYTES:
        return (
            431,
            f"the request headers are larger than {MAX_HEADERS_BYTES} bytes in all",
            "headers_too_large",
        )
    return None


def parse_base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"kimi_base_url must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


class KimiProxy:
    def __init__(self, *, verify: bool | str | ssl.SSLContext = True) -> None:
        self.verify = verify
        self.runtime: Runtime | None = None
        self.reloader: ConfigReloader | None = None
        self.relay_address: tuple[str, int] | None = None
        self.config = Config()
        self.base_url = "https://kimi.moonshot.cn"
        self.intercept_hosts: frozenset[str] = frozenset({"api.openai.com"})
        self.upstream_flows: UpstreamFlows | None = None
        self.credentials = CredentialVault()

    # -- options --------------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "kimi_base_url",
            str,
            "https://kimi.moonshot.cn",
            "Kimi web base URL (https://kimi.moonshot.cn, or https://www.kimi.com).",
        )
        loader.add_option(
            "kimi_dialect",
            str,
            "auto",
            "Upstream protocol: auto (by base URL), legacy (REST+SSE) or connect (Connect-RPC).",
        )
        loader.add_option("kimi_config", str, "", "YAML file with accounts, keys and options.")
        loader.add_option(
            "show_upstream",
            bool,
            True,
            "Show the proxy's own Kimi calls as flows (mitmweb, mitmproxy) and save them with "
            "-w / save_stream_file, tokens redacted.",
        )
        loader.add_option(
            "record_upstream",
            str,
            "",
            "Append the proxy's own Kimi calls (tokens redacted) to this flow file, for "
            "`kimi-free-api replay`.",
        )
        loader.add_option(
            "kimi_store",
            str,
            "~/.kimi-free-api/accounts.sqlite3",
            "SQLite file holding accounts and rotated tokens (created with mode 0600), or a "
            "postgresql:// URL (several hosts share the accounts).",
        )
        loader.add_option(
            "kimi_http_client",
            str,
            "aiohttp",
            "What carries the Kimi calls: aiohttp (HTTP/1.1, parsed in C: the least CPU) or "
            "httpx (httpcore: HTTP/2 where Kimi offers it).",
        )
        loader.add_option(
            "conversation_ttl",
            int,
            600,
            "Seconds a Kimi conversation the proxy created is kept after its last reply "
            "(0 = delete when the reply ends).",
        )
        loader.add_option(
            "auto_continue",
            bool,
            True,
            "Continue the Kimi conversation when a client resends a history it already sent.",
        )
        loader.add_option(
            "precreate_conversations",
            int,
            1,
            "Conversations each account creates ahead of time to save a round trip (0 = off).",
        )
        loader.add_option(
            "allow_private_urls",
            bool,
            False,
            "Allow file/image URLs, and pass-through destinations in regular proxy mode, that "
            "resolve to loopback, private or link-local addresses.",
        )
        loader.add_option(
            "max_request_bytes",
            int,
            DEFAULT_MAX_REQUEST_BYTES,
            "Largest request body the API accepts, before and after gzip/deflate decoding "
            "(413 above it).",
        )
        loader.add_option(
            "max_file_bytes", int, 100 * 1024 * 1024, "Largest file or image a client may send."
        )
        loader.add_option(
            "file_parse_timeout",
            int,
            30,
            "Seconds to wait for Kimi to parse an uploaded document before answering 504.",
        )
        loader.add_option(
            "intercept_hosts",
            Sequence[str],
            ["api.openai.com"],
            "Hosts whose API requests are answered through Kimi in regular proxy mode.",
        )
        loader.add_option(
            "max_account_concurrency", int, 5, "Replies one Kimi account may stream at once."
        )
        loader.add_option(
            "account_cooldown",
            int,
            60,
            "Seconds an account rests after a rate limit when Kimi gives no Retry-After.",
        )
        loader.add_option(
            "keepalive_interval",
            int,
            15,
            "Seconds of upstream silence after which an SSE keep-alive comment is sent.",
        )
        loader.add_option(
            "stream_flush_ms",
            int,
            STREAM_FLUSH_MS,
            "Milliseconds: answer events that arrive closer together than this after a write "
            "are written together (the first write and slower streams are never held; 0 = "
            "write each event at once).",
        )
        loader.add_option(
            "stall_timeout",
            int,
            120,
            "Seconds without a byte from Kimi after which a reply ends with a 504-style error.",
        )
        loader.add_option(
            "kimi_ca_file",
            str,
            "",
            "CA bundle to trust for Kimi's TLS certificate (default: the system store).",
        )
        loader.add_option(
            "refresh_path", str, "/api/auth/token/refresh", "Path of Kimi's token refresh call."
        )
        loader.add_option(
            "config_poll_interval",
            float,
            2.0,
            "Seconds between checks of the config file for changes, which reload it "
            "(SIGHUP reloads too); 0 = only on SIGHUP.",
        )
        # Offline interception must not connect to api.openai.com before our hook ran.
        ctx.options.update(connection_strategy="lazy")
        # mitmproxy's own error answers (unparsable requests, refused connections) as JSON.
        _mitm_errors.install()

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "stream_large_bodies" in updated and opts.stream_large_bodies:
            # It streams a large request body to the original destination before our request
            # hook runs: fail-open. Refuse it.
            raise exceptions.OptionsError(
                "kimi-free-api refuses stream_large_bodies: it would forward requests before "
                "the addon sees them; use body_size_limit instead"
            )
        if "connection_strategy" in updated and opts.connection_strategy != "lazy":
            raise exceptions.OptionsError("kimi-free-api needs connection_strategy=lazy")
        if "kimi_base_url" in updated or "mode" in updated:
            try:
                self.base_url = parse_base_url(self._kimi_base_url())
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from None
        if "kimi_http_client" in updated and opts.kimi_http_client not in ("aiohttp", "httpx"):
            raise exceptions.OptionsError(
                f"kimi_http_client must be aiohttp or httpx, got {opts.kimi_http_client!r}"
            )
        if "kimi_dialect" in updated and opts.kimi_dialect not in DIALECTS:
            raise exceptions.OptionsError(
                f"kimi_dialect must be one of {', '.join(DIALECTS)}, got {opts.kimi_dialect!r}"
            )
        for name in (
            "conversation_ttl",
            "precreate_conversations",
            "account_cooldown",
            "config_poll_interval",
            "stream_flush_ms",
        ):
            if name in updated and getattr(opts, name) < 0:
                raise exceptions.OptionsError(f"{name} must be >= 0")
        for name in (
            "max_file_bytes",
            "max_account_concurrency",
            "keepalive_interval",
            "stall_timeout",
            "file_parse_timeout",
            "max_request_bytes",
        ):
            if name in updated and getattr(opts, name) < 1:
                raise exceptions.OptionsError(f"{name} must be >= 1")
        if "intercept_hosts" in updated:
            self.intercept_hosts = normalise_hosts(list(opts.intercept_hosts))
        if {"record_upstream", "show_upstream"} & updated and self.relay_address is not None:
            self._record_upstream()  # changed while running (e.g. in mitmweb's options)
        if "kimi_config" in updated and opts.kimi_config:
            try:
                self.config = load_config(opts.kimi_config)
            except ConfigError as exc:
                raise exceptions.OptionsError(str(exc)) from None
            if self.config.options:
                try:
                    opts.update(**self.config.options)
                except KeyError as exc:
                    raise exceptions.OptionsError(f"{opts.kimi_config}: {exc}") from None

    def _kimi_base_url(self) -> str:
        """`kimi_base_url` when set; else the target of `--mode reverse:<url>`, which is what a
        user of `mitmdump -s addon/kimi_proxy.py --mode reverse:https://www.kimi.com` means."""
        opts = ctx.options
        if opts.has_changed("kimi_base_url"):
            return str(opts.kimi_base_url)
        for spec in opts.mode:
            mode = mode_specs.ProxyMode.parse(spec)
            if isinstance(mode, mode_specs.ReverseMode) and mode.scheme in ("http", "https"):
                return mode.data
        return str(opts.kimi_base_url)

    def _settings(self) -> RuntimeSettings:
        opts = ctx.options
        return RuntimeSettings(
            kimi_base_url=self.base_url,
            dialect=opts.kimi_dialect,
            store_path=opts.kimi_store,
            conversation_ttl=float(opts.conversation_ttl),
            auto_continue=opts.auto_continue,
            precreate=opts.precreate_conversations,
            allow_private_urls=opts.allow_private_urls,
            max_file_bytes=opts.max_file_bytes,
            file_parse_timeout=float(opts.file_parse_timeout),
            max_account_concurrency=opts.max_account_concurrency,
            account_cooldown=float(opts.account_cooldown),
            keepalive_interval=float(opts.keepalive_interval),
            stream_flush_interval=opts.stream_flush_ms / 1000,
            stall_timeout=float(opts.stall_timeout),
            refresh_path=opts.refresh_path,
            http_client=opts.kimi_http_client,
            max_request_bytes=opts.max_request_bytes,
            verify=ctx.options.kimi_ca_file or self.verify,
            config=self.config,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def running(self) -> None:
        # Sync on purpose: mitmproxy calls `running` from sync code when a script is (re)loaded.
        # httpx logs every request URL at INFO: too chatty for one line per completion, and
        # pre-signed upload URLs carry signatures.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.runtime = Runtime(self._settings(), credentials=self.credentials)
        asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        assert self.runtime is not None
        try:
            base = await self.runtime.start()
        except Exception:
            log.exception("kimi-free-api could not start its relay")
            raise
        parts = urlsplit(base)
        assert parts.hostname is not None
        assert parts.port is not None
        self.relay_address = (parts.hostname, parts.port)
        self._record_upstream()
        log.info("kimi-free-api relay ready; Kimi at %s", self.base_url)
        if ctx.options.kimi_config:
            self.reloader = ConfigReloader(
                ctx.options.kimi_config,
                self._reloaded,
                interval=float(ctx.options.config_poll_interval),
            )
            self.reloader.start()

    def _record_upstream(self) -> None:
        """(Re)build the recorder of Kimi calls from the show/record options."""
        if self.upstream_flows is not None:
            self.upstream_flows.close()
            self.upstream_flows = None
        kimi = self.runtime.kimi if self.runtime is not None else None
        if kimi is None:
            return
        path = ctx.options.record_upstream
        self.upstream_flows = UpstreamFlows(
            ctx.master.addons.get,
            show=ctx.options.show_upstream,
            record_path=str(Path(path).expanduser()) if path else "",
        )
        kimi.recorder = self.upstream_flows

    async def _reloaded(self, config: Config) -> None:
        """A new, valid config file: the runtime takes what can change live."""
        assert self.runtime is not None
        await self.runtime.apply_config(config)
        self.config = config

    async def done(self) -> None:
        # Async so that shutdown can delete the conversations we still hold. (mitmproxy's hot
        # reload of `-s` scripts calls `done` from sync code: restart instead of editing live.)
        if self.reloader is not None:
            await self.reloader.stop()
        if self.runtime is not None:
            await self.runtime.stop()
        if self.upstream_flows is not None:
            self.upstream_flows.close()

    # -- routing --------------------------------------------------------------------------------

    def _serves(self, flow: http.HTTPFlow) -> bool:
        if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
            return True
        # Both the Host header and the connection's target: either one naming an intercepted
        # host makes the request ours (the guard refuses to dial it in any case).
        names = (flow.request.pretty_host, flow.request.host)
        return any(normalise_host(name) in self.intercept_hosts for name in names)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Move the client's credentials out of the flow before anything shows or stores it
        (mitmweb's view adds the flow right after this hook)."""
        if flow.response or flow.error or not flow.live:
            return
        try:
            if not self._serves(flow):
                return
            headers = flow.request.headers
            headers.pop(CREDENTIAL_HANDLE_HEADER, None)  # only ours may name a handle
            found = [
                (name.lower(), value)
                for name, value in headers.items(multi=True)
                if name.lower() in CREDENTIAL_HEADERS
            ]
            for name in CREDENTIAL_HEADERS:
                headers.pop(name, None)
            problem = header_problem(flow.request, extra=found)
            if problem is not None:
                # Refused (and the credential dropped) before the flow is shown or kept.
                status, message, code = problem
                flow.response = _json_error(status, message, code, "invalid_request_error")
                return
            if found:
                flow.metadata[HANDLE_KEY] = self.credentials.put(found)
        except Exception as exc:
            log.error("kimi-free-api requestheaders hook failed: %s", type(exc).__name__)
            flow.response = _json_error(
                500, "kimi-free-api failed to route the request", "proxy_error", "server_error"
            )

    def _hold_token_body(self, flow: http.HTTPFlow) -> None:
        """`/token/check` carries a token in its body: keep the body in the vault and leave a
        placeholder in the flow."""
        if not flow.request.path.split("?", 1)[0].rstrip("/").endswith("/token/check"):
            return
        handle = flow.metadata.get(HANDLE_KEY)
        if not isinstance(handle, str):
            handle = flow.metadata[HANDLE_KEY] = self.credentials.put(())
        raw = flow.request.raw_content or b""
        encoding = flow.request.headers.pop("content-encoding", "identity")
        self.credentials.hold_body(handle, HeldBody(raw=raw, content_encoding=encoding))
        flow.request.content = b'{"token": "(held by kimi-free-api)"}'

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        try:
            if not self._serves(flow):
                return
            problem = header_problem(flow.request)
            if problem is not None:
                status, message, code = problem
                self._forget(flow)
                flow.response = _json_error(status, message, code, "invalid_request_error")
                return
            runtime = self.runtime
            if runtime is None:
                raise RuntimeError("the addon is not running")
            if not runtime.ready.is_set():  # only the first requests after start wait
                await asyncio.wait_for(runtime.ready.wait(), 30)
            assert self.relay_address is not None
            self._hold_token_body(flow)
            host, port = self.relay_address
            flow.metadata[CLIENT_TARGET_KEY] = _client_target(flow)
            flow.request.scheme = "http"
            flow.request.host = host
            flow.request.port = port
            flow.request.headers[RELAY_SECRET_HEADER] = runtime.secret
            # The relay sees only loopback; it rate-limits by this (never the client's own value).
            peer = flow.client_conn.peername
            flow.request.headers[CLIENT_ADDRESS_HEADER] = str(peer[0]) if peer else "-"
            handle = flow.metadata.get(HANDLE_KEY)
            if isinstance(handle, str):
                flow.request.headers[CREDENTIAL_HANDLE_HEADER] = handle
            flow.metadata[METADATA_KEY] = True
        except Exception as exc:
            log.error("kimi-free-api request hook failed: %s", type(exc).__name__)
            self._forget(flow)
            flow.response = _json_error(
                500, "kimi-free-api failed to route the request", "proxy_error", "server_error"
            )

    def _forget(self, flow: http.HTTPFlow) -> None:
        """Spend the flow's handle and take the relay's headers out of the flow, whatever
        happened to it, so neither the vault nor a `-w` capture keeps anything."""
        handle = flow.metadata.get(HANDLE_KEY)
        if isinstance(handle, str):
            self.credentials.discard(handle)
        flow.request.headers.pop(RELAY_SECRET_HEADER, None)
        flow.request.headers.pop(CREDENTIAL_HANDLE_HEADER, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            if not flow.metadata.get(METADATA_KEY) or flow.response is None:
                return
            self._forget(flow)
            target = flow.metadata.get(CLIENT_TARGET_KEY)
            if target:
                # The request has been sent: show what the client called, not the relay.
                flow.request.scheme, flow.request.host, flow.request.port = target
            if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
                # Pass the relay's SSE through as it is written; keep a copy when someone
                # looks at flows (mitmweb, -w), which would otherwise show no body (mitmweb:
                # an error) for a streamed answer.
                flows = self.upstream_flows
                keep = flows is not None and flows.watched
                flow.response.stream = keep_streamed_body(flow) if keep else True
        except Exception as exc:
            log.error("kimi-free-api responseheaders hook failed: %s", type(exc).__name__)

    def response(self, flow: http.HTTPFlow) -> None:
        try:
            if HANDLE_KEY in flow.metadata or flow.metadata.get(METADATA_KEY):
                self._forget(flow)
        except Exception as exc:
            log.error("kimi-free-api response hook failed: %s", type(exc).__name__)

    def error(self, flow: http.HTTPFlow) -> None:
        try:
            if HANDLE_KEY in flow.metadata or flow.metadata.get(METADATA_KEY):
                self._forget(flow)
        except Exception as exc:
            log.error("kimi-free-api error hook failed: %s", type(exc).__name__)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """The last line of defence: whatever happened in the hooks, mitmproxy may only dial our
        relay in reverse mode, never an intercepted host (api.openai.com) in any mode, and in
        the other modes no loopback, private or link-local address unless allow_private_urls."""
        try:
            address = data.server.address
            if address is None:
                return
            host = normalise_host(str(address[0]))
            port = int(address[1])
            if self.relay_address is not None and (host, port) == self.relay_address:
                return
            reverse = isinstance(data.client.proxy_mode, mode_specs.ReverseMode)
            if reverse or host in self.intercept_hosts:
                _refuse(data.server, f"{_mitm_errors.GUARD_PREFIX} to connect to {host}")
                return
            if ctx.options.allow_private_urls:
                return
            addresses = await asyncio.wait_for(system_resolver(host, port), 10)
            for ip in addresses:
                reason = refusal_reason(ip)
                if reason is not None:
                    _refuse(
                        data.server,
                        f"{_mitm_errors.GUARD_PREFIX} to connect to {host[:100]}: {reason} "
                        "address (allow_private_urls is off)",
                    )
                    return
            if not addresses:
                raise OSError("no address")
            # Dial the address just checked: a second lookup could answer differently.
            data.server.address = (addresses[0], port)
        except Exception as exc:
            _refuse(data.server, f"kimi-free-api guard failed: {type(exc).__name__}")


def _client_target(flow: http.HTTPFlow) -> list[object]:
    """Where the client sent `flow`: the intercepted host, or (reverse mode, where mitmproxy
    already put the reverse target in the request) the proxy's own address."""
    request = flow.request
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        host, port = flow.client_conn.sockname[:2]
        return ["https" if flow.client_conn.tls else "http", str(host), int(port)]
    return [request.scheme, request.host, request.port]


def _refuse(server: Server, reason: str) -> None:
    server.error = reason


addons = [KimiProxy()]
