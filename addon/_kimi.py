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
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from translator import KimiCall, RemoteProtocolError
from translator._jwt import JwtClaims, decode_jwt_claims

__all__ = [
    "KimiClient",
    "SessionIdentity",
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
        identity: SessionIdentity | None = None,
        timezone: str = "Asia/Shanghai",
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.identity = identity or SessionIdentity()
        self.timezone = timezone
        #: upstream calls made by this process
        self.calls = 0
        #: counts calls and errors for /metrics (set by the runtime)
        self.observer: UpstreamObserver | None = None

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
        return self.client.build_request(call.method, self.base_url + call.path, **kwargs)

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
        observer = self.observer
        if observer is None:
            with map_transport_errors(f"{call.method} {call.path}"):
                return await self.client.send(request)
        observer.upstream_call(streaming=False)
        try:
            with map_transport_errors(f"{call.method} {call.path}"):
                response = await self.client.send(request)
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
        observer = self.observer
        if observer is not None:
            observer.upstream_call(streaming=True)
        try:
            with map_transport_errors(f"{call.method} {call.path}"):
                response = await self.client.send(request, stream=True)
        except RemoteProtocolError as exc:
            if observer is not None:
                observer.upstream_error(exc.code)
            raise
        try:
            yield response
        except RemoteProtocolError as exc:
            # Whatever went wrong with this answer surfaces here: Kimi's error status or body,
            # an error event in the stream, a broken or stalled connection.
            if observer is not None:
                observer.upstream_error(exc.code)
            raise
        finally:
            await response.aclose()
