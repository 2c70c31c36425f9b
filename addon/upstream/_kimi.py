"""Executes the translator's `KimiCall`s with one shared httpx client.

This is the only module that turns a `KimiCall` into HTTP, and the boundary where httpx's
exceptions become the translator's `RemoteProtocolError` (so the rest of the addon deals with one
error tree, as httpx itself does with httpcore's).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from translator import KimiCall, RemoteProtocolError
from translator.connect._jwt import JwtClaims, decode_jwt_claims

from ._aiohttp_transport import wrap_stream

__all__ = [
    "ExchangeRecorder",
    "KimiClient",
    "SessionIdentity",
    "UpstreamExchange",
    "UpstreamObserver",
    "call_counter",
    "map_transport_errors",
]

#: the upstream calls made on behalf of the current request (set by the relay per request), so
#: the log line and the benchmark can report calls per completion
call_counter: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "kimi_call_counter", default=None
)


@functools.lru_cache(maxsize=256)
def _claims(token: str) -> JwtClaims | None:
    try:
        return decode_jwt_claims(token)
    except RemoteProtocolError:
        return None


def _count() -> None:
    counter = call_counter.get()
    if counter is not None:
        counter[0] += 1


USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


class UpstreamObserver(Protocol):
    """Told about every Kimi call and every failed one (the metrics implement it)."""

    def upstream_call(self, *, streaming: bool) -> None: ...

    def upstream_error(self, kind: str | None) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamExchange:
    """One finished Kimi call as it went over the wire: what `ExchangeRecorder`s get. Tokens
    are still in it: a recorder must redact before anything leaves the process."""

    method: str
    url: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: bytes
    started: float
    ended: float
    status: int | None = None  # None: no response (see `error`)
    response_headers: tuple[tuple[str, str], ...] = ()
    response_body: bytes = b""
    #: the body was decoded by httpx (unary calls): its content-encoding no longer applies
    body_decoded: bool = False
    error: str | None = None


class ExchangeRecorder(Protocol):
    """Gets every Kimi call while `active` (capture/_upstream_flows.py makes the flows)."""

    @property
    def active(self) -> bool: ...

    def record(self, exchange: UpstreamExchange) -> None: ...


class _Tee(httpx.AsyncByteStream):
    """A streamed body that keeps a copy of what the reader took (up to `cap` bytes)."""

    def __init__(self, inner: httpx.AsyncByteStream, cap: int) -> None:
        self.inner = inner
        self.cap = cap
        self.copy = bytearray()
        self.truncated = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            if len(self.copy) + len(chunk) <= self.cap:
                self.copy += chunk
            else:
                self.truncated = True
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


#: the most of one streamed answer a recorder gets (an answer is rarely over a few hundred kB)
RECORD_CAP = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """The browser-like ids Kimi expects; random numeric ids, stable for one process."""

    device_id: str = field(default_factory=lambda: str(secrets.randbelow(10**19) + 10**18))
    session_id: str = field(default_factory=lambda: str(secrets.randbelow(10**19) + 10**18))


@contextlib.contextmanager
def map_transport_errors(what: str) -> Iterator[None]:
    """httpx transport failures → RemoteProtocolError with a status a client understands."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise RemoteProtocolError(
            f"Kimi did not answer in time ({what}): {type(exc).__name__}",
            status=504,
            code="upstream_timeout",
        ) from exc
    except httpx.HTTPError as exc:
        raise RemoteProtocolError(
            f"cannot reach Kimi ({what}): {type(exc).__name__}: {exc}",
            status=502,
            code="upstream_unreachable",
        ) from exc


class KimiClient:
    """Performs calls against one Kimi base URL for one process.

    `client` is shared by every account (keep-alive pool); the per-account bits (access token,
    user id) are passed per call, never stored here.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        identity: SessionIdentity | None = None,
        timezone: str = "Asia/Shanghai",
    ) -> None:
        self.client = client
        #: the client's transport, called directly (see `_dispatch`); None: `client.send`
        self.transport = transport
        self._default_headers = {name.lower(): value for name, value in client.headers.items()}
        self._timeouts = client.timeout.as_dict()
        self.base_url = base_url.rstrip("/")
        self.identity = identity or SessionIdentity()
        self.timezone = timezone
        #: upstream calls made by this process
        self.calls = 0
        #: counts calls and errors for /metrics (set by the runtime)
        self.observer: UpstreamObserver | None = None
        #: gets each finished call (with its bodies) while active: see capture/_upstream_flows.py
        self.recorder: ExchangeRecorder | None = None

    def headers(
        self,
        call: KimiCall,
        *,
        token: str | None,
        traffic_id: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        headers = {
            "user-agent": USER_AGENT,
            "origin": self.base_url,
            "referer": self.base_url + "/",
            "x-msh-platform": "web",
            "x-msh-device-id": self.identity.device_id,
            "x-msh-session-id": self.identity.session_id,
            "r-timezone": self.timezone,
        }
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
            claims = _claims(token)
            # Connect access tokens are JWTs naming the user, session and device: send those,
            # as the browser does; legacy tokens carry no such claims.
            if claims is not None:
                if claims.sub:
                    headers["x-traffic-id"] = claims.sub
                if claims.ssid:
                    headers["x-msh-session-id"] = claims.ssid
                if claims.device_id:
                    headers["x-msh-device-id"] = claims.device_id
        if traffic_id:
            headers["x-traffic-id"] = traffic_id
        if extra:
            headers.update(extra)
        headers.update(call.headers)
        return headers

    def _request(self, call: KimiCall, headers: dict[str, str]) -> httpx.Request:
        kwargs: dict[str, Any] = {"headers": headers}
        if call.content is not None:
            kwargs["content"] = call.content
        elif call.json is not None:
            kwargs["json"] = call.json
        if self.transport is None:
            return self.client.build_request(call.method, self.base_url + call.path, **kwargs)
        # What `build_request` would add, without its merging of URL, params and headers:
        # the client's default headers under ours, its timeouts, and any cookies it holds.
        kwargs["headers"] = {**self._default_headers, **headers}
        request = httpx.Request(
            call.method,
            self.base_url + call.path,
            extensions={"timeout": self._timeouts},
            **kwargs,
        )
        if self.client.cookies:
            httpx.Cookies(self.client.cookies).set_cookie_header(request)
        return request

    async def _dispatch(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """`client.send(request, stream=stream)`, straight to the transport when there is one:
        no auth or redirect machinery (neither is used) on every Kimi call."""
        transport = self.transport
        if transport is None:
            return await self.client.send(request, stream=stream)
        response = await transport.handle_async_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            self.client.cookies.extract_cookies(response)
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    async def send(
        self,
        call: KimiCall,
        *,
        token: str | None,
        traffic_id: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One unary call; the body is read."""
        request = self._request(
            call, self.headers(call, token=token, traffic_id=traffic_id, extra=extra_headers)
        )
        self.calls += 1
        _count()
        recorder = self.recorder
        if recorder is None or not recorder.active:
            return await self._send(call, request)
        started = time.time()
        try:
            response = await self._send(call, request)
        except RemoteProtocolError as exc:
            recorder.record(_exchange(request, started, None, b"", error=exc.message))
            raise
        recorder.record(_exchange(request, started, response, response.content, body_decoded=True))
        return response

    async def _send(self, call: KimiCall, request: httpx.Request) -> httpx.Response:
        observer = self.observer
        if observer is None:
            with map_transport_errors(f"{call.method} {call.path}"):
                return await self._dispatch(request, stream=False)
        observer.upstream_call(streaming=False)
        try:
            with map_transport_errors(f"{call.method} {call.path}"):
                response = await self._dispatch(request, stream=False)
        except RemoteProtocolError as exc:
            observer.upstream_error(exc.code)
            raise
        if response.status_code >= 400:
            observer.upstream_error(f"http_{response.status_code}")
        return response

    @contextlib.asynccontextmanager
    async def stream(
        self,
        call: KimiCall,
        *,
        token: str | None,
        traffic_id: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A streaming call; the caller reads `response.aiter_raw()` (identity-encoded bytes)."""
        headers = self.headers(call, token=token, traffic_id=traffic_id, extra=extra_headers)
        # The translator must see the bytes Kimi sent, never a compressed body.
        headers["accept-encoding"] = "identity"
        request = self._request(call, headers)
        self.calls += 1
        _count()
        started = time.time()
        observer = self.observer
        if observer is not None:
            observer.upstream_call(streaming=True)
        try:
            with map_transport_errors(f"{call.method} {call.path}"):
                response = await self._dispatch(request, stream=True)
        except RemoteProtocolError as exc:
            if observer is not None:
                observer.upstream_error(exc.code)
            raise
        recorder = self.recorder
        tee: _Tee | None = None
        if (
            recorder is not None
            and recorder.active
            and isinstance(response.stream, httpx.AsyncByteStream)
        ):
            tee = _Tee(response.stream, RECORD_CAP)
            wrap_stream(response, tee)
        failure: str | None = None
        try:
            yield response
        except RemoteProtocolError as exc:
            # Whatever went wrong with this answer surfaces here: Kimi's error status or body,
            # an error event in the stream, a broken or stalled connection.
            if observer is not None:
                observer.upstream_error(exc.code)
            failure = exc.message
            raise
        except BaseException as exc:  # the client hung up (cancelled), ...
            failure = f"the reply ended early: {type(exc).__name__}"
            raise
        finally:
            await response.aclose()
            if recorder is not None and tee is not None:
                if tee.truncated:
                    failure = f"body over {RECORD_CAP} bytes: not all of it recorded"
                recorder.record(
                    _exchange(request, started, response, bytes(tee.copy), error=failure)
                )


def _exchange(
    request: httpx.Request,
    started: float,
    response: httpx.Response | None,
    body: bytes,
    *,
    error: str | None = None,
    body_decoded: bool = False,
) -> UpstreamExchange:
    return UpstreamExchange(
        method=request.method,
        url=str(request.url),
        request_headers=tuple(request.headers.multi_items()),
        request_body=request.content,
        started=started,
        ended=time.time(),
        status=None if response is None else response.status_code,
        response_headers=() if response is None else tuple(response.headers.multi_items()),
        response_body=body,
        body_decoded=body_decoded,
        error=error,
    )
