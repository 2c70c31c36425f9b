"""Kimi's (legacy dialect) error bodies, error types and statuses → OpenAI errors.

Kimi reports failures as `{"error_type": "...", "message": "...", "detail": [...]}`, as an HTTP
body (the status is not always an error status) or inside the stream's `error` event. The
mapping, by error type first and HTTP status second:

    auth.token.invalid, or HTTP 401          → 401 authentication_error   invalid_api_key
    HTTP 403                                 → 403 permission_error       upstream_forbidden
    chat.user_stream_pushing                 → 429 rate_limit_error       stream_pushing
    a rate/long-text limit type, or HTTP 429 → 429 rate_limit_error       rate_limit_exceeded
    openai.completion.token_length_too_long  → 400 invalid_request_error  context_length_exceeded
    a paywall/quota type, or HTTP 402        → 402 insufficient_quota     insufficient_quota
    openai.completion.stream (overload)      → 503 upstream_error         upstream_overloaded
    chat.not_found                           → 404 invalid_request_error  conversation_not_found
    a moderation type (see `is_moderation`)  → 400 invalid_request_error  content_filter
    anything else (5xx, unknown types)       → 502 upstream_error         upstream_error

The message always keeps Kimi's words: "Kimi: <message> (<error_type or HTTP status>)".
`Retry-After` is not part of the error (the error tree is shared); the addon reads it with
`retry_after_seconds`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from translator._errors import RemoteProtocolError

__all__ = ["error_for_type", "is_moderation", "kimi_error", "retry_after_seconds"]

_MAX_MESSAGE: Final = 500

#: Substrings of error types that mean "the content was refused" (chat.forbidden is the one seen;
#: the others are how content-security types are usually named, kept as a guess).
_MODERATION_HINTS: Final = ("forbidden", "security", "sensitive", "moderation", "censor")
_RATE_HINTS: Final = ("rate_limit", "ratelimit", "too_many", "frequency", "usage_limit")
_PAYWALL_HINTS: Final = ("paywall", "quota", "subscription", "payment")


def is_moderation(error_type: str | None) -> bool:
    """True for an error type that means content moderation stopped the answer. An `error`
    event without any type is moderation too: that is how the reference client saw it."""
    if not error_type:
        return True
    lowered = error_type.lower()
    return any(hint in lowered for hint in _MODERATION_HINTS)


def error_for_type(
    error_type: str | None, message: str, status: int | None = None
) -> RemoteProtocolError:
    """The OpenAI error for a Kimi `error_type` (and the HTTP `status` it came with, if any)."""
    kind = (error_type or "").lower()
    text = _message(error_type, message, status)

    def make(status: int, type_: str, code: str) -> RemoteProtocolError:
        return RemoteProtocolError(text, status=status, type=type_, code=code)

    if kind == "auth.token.invalid" or status == 401:
        return make(401, "authentication_error", "invalid_api_key")
    if kind == "chat.user_stream_pushing":
        return make(429, "rate_limit_error", "stream_pushing")
    if kind == "openai.completion.token_length_too_long":
        return make(400, "invalid_request_error", "context_length_exceeded")
    if kind == "openai.completion.stream":
        return make(503, "upstream_error", "upstream_overloaded")
    if kind == "chat.not_found":
        # The conversation the request names is unknown or deleted: the client's 404.
        return make(404, "invalid_request_error", "conversation_not_found")
    if any(hint in kind for hint in _PAYWALL_HINTS) or status == 402:
        return make(402, "insufficient_quota", "insufficient_quota")
    if any(hint in kind for hint in _RATE_HINTS) or status == 429:
        return make(429, "rate_limit_error", "rate_limit_exceeded")
    if status == 403:
        return make(403, "permission_error", "upstream_forbidden")
    if kind and is_moderation(kind):
        return make(400, "invalid_request_error", "content_filter")
    return make(502, "upstream_error", "upstream_error")


def kimi_error(status: int, body: bytes | Mapping[str, Any] | None) -> RemoteProtocolError:
    """The OpenAI error for a failed Kimi HTTP call: its status and body (raw bytes, parsed
    JSON, or nothing). A body that is not Kimi's JSON error is quoted (shortened)."""
    error_type: str | None = None
    message = ""
    obj: Any = body
    if isinstance(body, bytes | bytearray):
        text = bytes(body).decode("utf-8", errors="replace")  # only quoted in a message
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
            message = " ".join(text.split())
    if isinstance(obj, Mapping):
        inner = obj.get("error")
        source: Mapping[str, Any] = inner if isinstance(inner, Mapping) else obj
        error_type = _str(source.get("error_type")) or _str(obj.get("error_type"))
        message = _str(source.get("message")) or _str(obj.get("message")) or ""
    return error_for_type(error_type, message, status)


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (RFC 9110 §10.2.3): delay-seconds, or an
    HTTP-date, which needs the caller's clock as `now` (epoch seconds; the translator has none).
    None when the header is absent or unreadable; never negative."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    when = _http_date(value)
    if when is None or now is None:
        return None
    return max(0.0, when - now)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _message(error_type: str | None, message: str, status: int | None) -> str:
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "…"
    what = error_type or (f"HTTP {status}" if status is not None else "no error type")
    return f"Kimi: {message or 'request failed'} ({what})"


_MONTHS: Final = (
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "oct",
    "nov",
    "dec",
)
# IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT", RFC 850 "Sunday, 06-Nov-94 08:49:37 GMT",
# asctime "Sun Nov  6 08:49:37 1994" (RFC 9110 §5.6.7 asks recipients to accept all three).
_IMF: Final = re.compile(
    r"^[A-Za-z]{3}, (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$"
)
_RFC850: Final = re.compile(
    r"^[A-Za-z]+, (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT$"
)
_ASCTIME: Final = re.compile(
    r"^[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})$"
)


def _http_date(value: str) -> float | None:
    if m := _IMF.match(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.match(value):
        day, mon, yy, hh, mm, ss = m.groups()
        # RFC 9110: a two-digit year more than 50 years in the future is in the past century;
        # without a clock we take 70..99 as 19xx, as most HTTP libraries do.
        year = str((1900 if int(yy) >= 70 else 2000) + int(yy))
    elif m := _ASCTIME.match(value):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    if mon.lower() not in _MONTHS:
        return None
    month = _MONTHS.index(mon.lower()) + 1
    d, h, mi, s = int(day), int(hh), int(mm), int(ss)
    if not (1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
        return None
    return float(_days_from_civil(int(year), month, d) * 86400 + h * 3600 + mi * 60 + s)


def _days_from_civil(y: int, m: int, d: int) -> int:
    # Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's algorithm);
    # computed here because `calendar`/`email.utils` would pull in clock and socket modules.
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
