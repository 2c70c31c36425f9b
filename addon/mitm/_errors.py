"""mitmproxy's own error answers in OpenAI's JSON shape instead of HTML.

Some requests fail inside mitmproxy before or after any addon hook could answer them: a request
it cannot parse (or refuses as smuggling), an upstream connection the guard killed or that
failed, an upstream that broke the protocol. mitmproxy then writes a small HTML page, and an
`error` hook cannot replace it (a `flow.response` set there is ignored; mitmproxy PR #7999 would
allow it and is not merged). So this module swaps mitmproxy's error page makers for ones that
write `{"error": {...}}`:

- HTTP/1 clients: `mitmproxy.proxy.layers.http._http1.make_error_response` (the whole response);
- HTTP/2 and HTTP/3 clients: the `format_error` those layers import (the body; mitmproxy still
  labels it `text/html` there, clients that parse the body as JSON, as the OpenAI SDKs do, read
  it all the same).

These are private mitmproxy names (checked against 12.3.1): `install()` verifies that they exist
and refuses to start otherwise, so an upgrade that moves them fails loudly instead of silently
sending HTML again. The patch covers every flow of the process, which serves an OpenAI-style API.

The message never repeats mitmproxy's own text, which can quote what the client sent (a header
with a token in it, for a request mitmproxy could not parse); only the reason given by our
`server_connect` guard, which we wrote, is passed on.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["GUARD_PREFIX", "error_body", "install"]

#: server_connect refusals start with this; their text is ours and safe to show the client
GUARD_PREFIX = "kimi-free-api refuses"

_KNOWN: dict[int, tuple[str, str, str]] = {
    400: (
        "invalid_request_error",
        "malformed_request",
        "the proxy could not read this HTTP request (malformed, or refused as ambiguous)",
    ),
    408: ("invalid_request_error", "request_timeout", "the request was not received in time"),
    413: ("invalid_request_error", "request_too_large", "the request is too large"),
    431: (
        "invalid_request_error",
        "headers_too_large",
        "the request headers are too large",
    ),
    502: (
        "upstream_error",
        "upstream_unreachable",
        "the proxy could not reach or read the upstream server",
    ),
    504: ("upstream_error", "upstream_timeout", "the upstream server did not answer in time"),
}

_installed = False


def error_body(status: int, message: str = "") -> bytes:
    """The JSON body for one of mitmproxy's error answers."""
    type_, code, text = _KNOWN.get(
        status,
        (
            "invalid_request_error" if 400 <= status < 500 else "server_error",
            "proxy_error",
            f"the proxy could not handle this request (HTTP {status})",
        ),
    )
    at = message.find(GUARD_PREFIX)
    if at >= 0:
        # Our own refusal text ("... refuses to connect to 10.0.0.1: private"): no client data.
        text = message[at:][:300]
        type_, code = "invalid_request_error", "destination_refused"
    error: dict[str, Any] = {"message": text, "type": type_, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def install() -> None:
    """Patch mitmproxy's error page makers (idempotent)."""
    global _installed
    if _installed:
        return
    from mitmproxy import http, version
    from mitmproxy.net.http import http1
    from mitmproxy.proxy.layers.http import _http1, _http2, _http3

    for module in (_http1, _http2, _http3):
        if not hasattr(module, "format_error"):
            raise RuntimeError(
                f"kimi-free-api cannot patch {module.__name__}.format_error: "
                "this mitmproxy version is not supported"
            )
    if not hasattr(_http1, "make_error_response"):
        raise RuntimeError("kimi-free-api cannot patch mitmproxy's HTTP/1 error responses")

    def make_error_response(status_code: int, message: str = "") -> bytes:
        response = http.Response.make(
            status_code,
            error_body(status_code, message),
            http.Headers(
                Server=version.MITMPROXY,
                Connection="close",
                Content_Type="application/json",
            ),
        )
        return bytes(http1.assemble_response(response))

    # Through the module dicts: these are private names, not a typed API.
    vars(_http1)["make_error_response"] = make_error_response
    for module in (_http1, _http2, _http3):
        vars(module)["format_error"] = error_body
    _installed = True
