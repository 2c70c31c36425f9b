"""The proxy's own Kimi calls as mitmproxy flows: visible in mitmweb, saved by `mitmdump -w`,
or written to a file of their own (`--set record_upstream=FILE`).

mitmproxy never sees these calls: the relay makes them with httpx (docs/architecture.md). So
`KimiClient` hands every finished call to `UpstreamFlows` (an `ExchangeRecorder`), which

1. redacts it: every credential is replaced by `REDACTED` — the `authorization`, `cookie`,
   `set-cookie` and `*token*` headers, string values under `*token*` / `password` / `secret`
   / `cookie` / `authorization` keys of JSON bodies (a refresh answer's new tokens), query
   parameters with such names, and every one of those values wherever else it appears (URL,
   bodies);
2. builds an `http.HTTPFlow` with the request, the response and their raw bodies (a streamed
   answer exactly as Kimi sent it, so `kimi-free-api replay` can read it);
3. gives it to mitmproxy's flow list (`view`, mitmweb and mitmproxy's console), to the `save`
   addon when `mitmdump -w` / `save_stream_file` is writing (its filter applies), and to the
   `record_upstream` file.

It is active only when one of those is there, so a plain `mitmdump` pays nothing. Upstream flows
carry `metadata["kimi_free_api"] = "upstream"` (`~m upstream` does not exist; filter them in
mitmweb by host, e.g. `~d kimi.com`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from mitmproxy import connection, http
from mitmproxy import flow as mflow
from mitmproxy.io import tnetstring
from mitmproxy.net.http import status_codes

from addon.upstream._kimi import UpstreamExchange

__all__ = ["REDACTED", "UpstreamFlows", "exchange_flow", "keep_streamed_body", "redact"]

log = logging.getLogger("kimi_free_api")

REDACTED: Final = "REDACTED"
METADATA_VALUE: Final = "upstream"
_SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-kimi-free-api-relay"}
)
_SECRET_KEY: Final = re.compile(r"token|password|secret|cookie|authorization", re.IGNORECASE)
#: shorter strings are not replaced everywhere (they would hit ordinary text)
_MIN_SECRET: Final = 8
#: the most of a relay answer kept for mitmweb / -w (the client got all of it anyway)
CLIENT_BODY_CAP: Final = 16 * 1024 * 1024


def _secret_header(name: str) -> bool:
    name = name.lower()
    return name in _SECRET_HEADERS or "token" in name


def _header_secrets(name: str, value: str) -> Iterable[str]:
    name = name.lower()
    if name in ("authorization", "proxy-authorization"):
        yield value.partition(" ")[2].strip() or value
    elif name in ("cookie", "set-cookie"):
        for part in value.split(";"):
            yield part.partition("=")[2].strip()
    else:
        yield value


def _redact_json(value: Any, found: set[str]) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, str) and _SECRET_KEY.search(str(key)):
                found.add(item)
                out[key] = REDACTED
            else:
                out[key] = _redact_json(item, found)
        return out
    if isinstance(value, list):
        return [_redact_json(v, found) for v in value]
    return value


def _json_body(body: bytes, found: set[str]) -> bytes:
    """`body` with the secret JSON values redacted (unchanged bytes when there are none)."""
    stripped = body.strip()
    if stripped[:1] not in (b"{", b"["):
        return body
    try:
        parsed = json.loads(stripped)
    except (ValueError, RecursionError):
        return body
    redacted = _redact_json(parsed, found)
    if redacted == parsed:
        return body
    return json.dumps(redacted, ensure_ascii=False, separators=(",", ":")).encode()


def _query(url: str, found: set[str]) -> str:
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(_SECRET_KEY.search(k) for k, _ in pairs):
        return url
    clean = []
    for key, value in pairs:
        if _SECRET_KEY.search(key):
            found.add(value)
            value = REDACTED
        clean.append((key, value))
    return parts._replace(query=urlencode(clean)).geturl()


def redact(ex: UpstreamExchange, extra_secrets: Iterable[str] = ()) -> UpstreamExchange:
    """`ex` without any credential (see the module docstring)."""
    found: set[str] = set(extra_secrets)

    def headers(items: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        out = []
        for name, value in items:
            if _secret_header(name):
                found.update(_header_secrets(name, value))
                value = REDACTED
            out.append((name, value))
        return tuple(out)

    request_headers = headers(ex.request_headers)
    response_headers = headers(ex.response_headers)
    url = _query(ex.url, found)
    request_body = _json_body(ex.request_body, found)
    response_body = _json_body(ex.response_body, found)
    secrets = sorted((s for s in found if len(s) >= _MIN_SECRET), key=len, reverse=True)

    def scrub_text(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text

    def scrub(data: bytes) -> bytes:
        for secret in secrets:
            data = data.replace(secret.encode(), REDACTED.encode())
        return data

    return UpstreamExchange(
        method=ex.method,
        url=scrub_text(url),
        request_headers=tuple((n, scrub_text(v)) for n, v in request_headers),
        request_body=scrub(request_body),
        started=ex.started,
        ended=ex.ended,
        status=ex.status,
        response_headers=tuple((n, scrub_text(v)) for n, v in response_headers),
        response_body=scrub(response_body),
        body_decoded=ex.body_decoded,
        error=None if ex.error is None else scrub_text(ex.error),
    )


def _headers(items: tuple[tuple[str, str], ...], *, body: bytes, decoded: bool) -> http.Headers:
    drop = {"content-length", "transfer-encoding"} | ({"content-encoding"} if decoded else set())
    kept = [(n.encode(), v.encode()) for n, v in items if n.lower() not in drop]
    kept.append((b"content-length", str(len(body)).encode()))
    return http.Headers(kept)


def exchange_flow(ex: UpstreamExchange) -> http.HTTPFlow:
    """The mitmproxy flow of one (already redacted) exchange."""
    parts = urlsplit(ex.url)
    scheme = parts.scheme or "https"
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    client = connection.Client(
        peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0), timestamp_start=ex.started
    )
    server = connection.Server(address=(host, port), timestamp_start=ex.started)
    flow = http.HTTPFlow(client, server)
    flow.request = http.Request(
        host=host,
        port=port,
        method=ex.method.encode(),
        scheme=scheme.encode(),
        authority=b"",
        path=path.encode(),
        http_version=b"HTTP/1.1",
        headers=_headers(ex.request_headers, body=ex.request_body, decoded=True),
        content=ex.request_body,
        trailers=None,
        timestamp_start=ex.started,
        timestamp_end=ex.started,
    )
    if ex.status is not None:
        flow.response = http.Response(
            http_version=b"HTTP/1.1",
            status_code=ex.status,
            reason=status_codes.RESPONSES.get(ex.status, "").encode(),
            headers=_headers(ex.response_headers, body=ex.response_body, decoded=ex.body_decoded),
            content=ex.response_body,
            trailers=None,
            timestamp_start=ex.started,
            timestamp_end=ex.ended,
        )
    if ex.error is not None:
        flow.error = mflow.Error(ex.error, timestamp=ex.ended)
    flow.metadata["kimi_free_api"] = METADATA_VALUE
    return flow


class UpstreamFlows:
    """The `ExchangeRecorder` that turns Kimi calls into mitmproxy flows (module docstring).

    `addon(name)` finds one of mitmproxy's addons (`view`, `save`) or None; `show` says
    whether the flow list and `-w` get upstream flows; `record_path` (or "") is a file of
    upstream flows only, appended to."""

    def __init__(
        self, addon: Callable[[str], Any], *, show: bool = True, record_path: str = ""
    ) -> None:
        self._addon = addon
        self.show = show
        #: the record file, opened for appending; each flow goes in with ONE write, so several
        #: worker processes (`--workers`) can share the file without mixing their flows
        self._fd: int | None = None
        self.recorded = 0
        if record_path:
            self._fd = os.open(record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _view(self) -> Any:
        return self._addon("view") if self.show else None

    def _save(self) -> Any:
        save = self._addon("save") if self.show else None
        return save if save is not None and getattr(save, "stream", None) else None

    @property
    def watched(self) -> bool:
        """Someone looks at flows: mitmproxy's flow list, or `-w` is writing."""
        return self._view() is not None or self._save() is not None

    @property
    def active(self) -> bool:
        return self._fd is not None or self._view() is not None or self._save() is not None

    def record(self, exchange: UpstreamExchange) -> None:
        try:
            flow = exchange_flow(redact(exchange))
            view, save = self._view(), self._save()
            if view is not None:
                view.add([flow])
            if save is not None:
                save.save_flow(flow)
            if self._fd is not None:
                # what mitmproxy's FlowWriter writes, in one piece
                os.write(self._fd, tnetstring.dumps(flow.get_state()))
            self.recorded += 1
        except Exception as exc:  # recording must never break a reply
            log.warning("could not record a Kimi call as a flow: %s", type(exc).__name__)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def keep_streamed_body(flow: http.HTTPFlow) -> Callable[[bytes], bytes]:
    """A `response.stream` callable that passes the relay's answer through as it comes and,
    at its clean end, stores it (up to `CLIENT_BODY_CAP`) as the flow's body: mitmweb then shows
    the streamed answer instead of failing on a body that was never stored, and `-w` saves it.
    (mitmproxy's own `store_streamed_bodies` does the same for every flow.)"""
    pieces: list[bytes] = []
    size = 0

    def stream(chunk: bytes) -> bytes:
        nonlocal size
        if chunk:
            if size + len(chunk) <= CLIENT_BODY_CAP:
                pieces.append(chunk)
                size += len(chunk)
        elif flow.response is not None and flow.response.raw_content is None:
            flow.response.raw_content = b"".join(pieces)
            pieces.clear()
        return chunk

    return stream
