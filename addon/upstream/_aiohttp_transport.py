"""An httpx transport that sends requests with aiohttp's client: the Kimi client's wire.

Why: in a profile of the proxy under the benchmark (docs/benchmarks.md), httpx's default
transport (httpcore over anyio, h11 parsing in pure Python) was about 45 % of the proxy's CPU,
most of it per streamed chunk (anyio's stream wrappers and cancel scopes, h11's event machine)
and per pooled connection (httpcore scans every pooled connection, and asks each socket for its
peer, whenever a request starts or ends). aiohttp parses HTTP/1.1 in C and keeps its pool per
host. Everything above the transport stays httpx: the client, its cookies, redirects (off),
`Response.aiter_bytes()` and content decoding, the error tree the addon maps
(`_kimi.map_transport_errors`), so nothing else changes.

What it does not do: HTTP/2 (aiohttp's client speaks HTTP/1.1; Kimi serves both), and HTTP
proxies from the environment (the Kimi client never uses them: trust_env=False).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

import aiohttp
import httpx
from multidict import CIMultiDict

__all__ = ["AiohttpTransport"]


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
    connect = timeouts.get("connect")
    pool = timeouts.get("pool")
    return aiohttp.ClientTimeout(
        total=None,
        # aiohttp's `connect` covers the wait for a pool slot and the connection; `sock_connect`
        # the connection alone (httpx: `pool` + `connect`)
        connect=None if connect is None or pool is None else connect + pool,
        sock_connect=connect,
        sock_read=timeouts.get("read"),
    )


def _error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """aiohttp's (and asyncio's) failures as the httpx exception they stand for."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)


#: the response extension that carries the body (httpx's extensions are free-form)
_BODY = "kimi_free_api.aiohttp_body"

_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class _Body(httpx.AsyncByteStream):
    """The response body as aiohttp reads it: each piece as soon as it arrived."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while data := await self.read():
            yield data

    async def read(self) -> bytes:
        """Everything that has arrived since the last call (waiting for at least one byte);
        b"" at the end of the body."""
        try:
            return await self._response.content.readany()
        except _FAILURES as exc:
            raise _error(exc, self._request) from exc

    def _read_buffered(self) -> bytes:
        try:
            return self._response.content.read_nowait()
        except _FAILURES as exc:
            raise _error(exc, self._request) from exc

    async def gather(self, seconds: float) -> bytes:
        # Reading is paused meanwhile, so the events that arrive wait in the kernel and come in
        # with one wake-up, one TLS read and one parse instead of one of each per event.
        connection = self._response.connection
        protocol = connection.protocol if connection is not None else None
        if protocol is None:
            await asyncio.sleep(seconds)
            return self._read_buffered()
        protocol.pause_reading()
        try:
            await asyncio.sleep(seconds)
        finally:
            protocol.resume_reading()
        # One loop turn polls the socket again (uvloop polls before it runs this task's next
        # step; asyncio's loop after it, hence the second turn).
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return self._read_buffered()

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()  # the connection goes back to the pool
        else:
            response.close()  # a body left unread: this connection cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=AiohttpTransport(verify=...))`. One aiohttp session,
    created on first use (it needs the running loop), closed with the client."""

    def __init__(
        self,
        *,
        verify: bool | ssl.SSLContext = True,
        max_connections: int = 1000,
        keepalive_expiry: float = 15.0,
    ) -> None:
        self._ssl: bool | ssl.SSLContext = (
            ssl.create_default_context() if verify is True else verify
        )
        self._limit = max_connections
        self._keepalive = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=0,
                ssl=self._ssl,
                keepalive_timeout=self._keepalive,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # httpx keeps the cookies, decodes bodies and follows (no) redirects
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
                # headers come from httpx as they are; aiohttp adds none of its own
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw
        )
        body = await request.aread()
        kwargs: dict[str, Any] = {}
        if body or request.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            kwargs["data"] = body
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                allow_redirects=False,
                timeout=_timeout(request),
                **kwargs,
            )
        except _FAILURES as exc:
            raise _error(exc, request) from exc
        version = response.version
        reader = _Body(response, request)
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=reader,
            extensions={
                # httpx wraps the stream (BoundAsyncStream); body_reader finds the body here
                _BODY: reader,
                "http_version": f"HTTP/{version.major}.{version.minor}".encode()
                if version is not None
                else b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def wrap_stream(response: httpx.Response, stream: httpx.AsyncByteStream) -> None:
    """Make `stream` (e.g. a recorder's tee around the body) what every reader reads: also
    `body_reader`, which would otherwise read this transport's body directly."""
    response.stream = stream
    response.extensions.pop(_BODY, None)


class BodyReader(Protocol):
    """How the relay reads a streamed answer (`body_reader`)."""

    async def read(self) -> bytes:
        """Everything that arrived since the last read (waiting for at least one byte); b""
        at the end of the body."""
        ...

    async def gather(self, seconds: float) -> bytes:
        """Wait `seconds`, then return what arrived meanwhile (b"" if nothing)."""
        ...


class _Pieces:
    """`BodyReader` over httpx's `aiter_bytes`: a recorded or compressed body, or another
    transport. It cannot tell what is buffered, so it gathers nothing."""

    def __init__(self, response: httpx.Response) -> None:
        self._pieces = response.aiter_bytes().__aiter__()

    async def read(self) -> bytes:
        return await anext(self._pieces, b"")

    async def gather(self, seconds: float) -> bytes:
        # It cannot tell what is buffered: nothing to gather, and no reason to wait.
        return b""


def body_reader(response: httpx.Response) -> BodyReader:
    """A reader of a streamed response's body.

    For an identity-encoded body from this transport it reads aiohttp's buffer directly: one
    call per wake-up instead of httpx's iterator chain (raw stream, decoders, chunker) per
    piece, which was a measured share of the proxy's CPU per streamed event. Anything else
    (a recorded or compressed body, another transport) goes through `aiter_bytes`, which
    undoes a content-encoding.
    """
    body = response.extensions.get(_BODY)
    if body is not None and "content-encoding" not in response.headers:
        return cast(_Body, body)
    return _Pieces(response)
