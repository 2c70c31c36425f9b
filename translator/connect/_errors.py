"""Errors of the Connect dialect: Kimi's error objects → our errors, and the typed readers.

Kimi reports errors two ways, both read here:

- a non-200 answer to a call, whose body is Connect error JSON `{"code", "message", "details"}`
  (or whatever a proxy in between put there) → `connect_error(status, body)`;
- an `error` object inside the stream (HTTP 200) or in its end-of-stream trailer →
  `error_event(error, after_text=...)`: `ContentFiltered` when the reason names a moderation
  stop, or when it comes after answer text and its code is not one we know to mean auth, rate
  or overload (`STAYS_AN_ERROR`); else `UpstreamFailure`.

The Connect code (with Kimi's `debug.reason` / `debug.paywall` details) decides the HTTP status
and OpenAI error type the client sees.

The small typed readers (`read_object`, `read_string`, `present`, `malformed`) are here too: a
field of the wrong type is itself an error (`RemoteProtocolError`, code `bad_message`), and
`_connect_stream` reads its messages with the same functions. `__all__` names what the package
re-exports; the readers and `error_event` are shared with `_connect_stream` only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from translator._errors import RemoteProtocolError
from translator._upstream import ContentFiltered, UpstreamEvent, UpstreamFailure

__all__ = ["MODERATION_REASON_MARKERS", "connect_error"]

#: Substrings of an error `reason` that mean a moderation stop. No public client has recorded
#: Kimi's exact moderation reasons yet, so this is a guess kept in one place: these words name
#: content policy and nothing else (we deliberately leave out "RISK", which Kimi also uses for
#: account risk control).
MODERATION_REASON_MARKERS: Final = ("SENSITIVE", "MODERATION", "CONTENT_FILTER", "CENSOR")

#: Codes (and the overload reason) that stay errors even after answer text. Any OTHER error
#: after answer text ends the answer as a moderation stop, keeping the text: that is how the
#: public record treats Kimi's unexplained in-stream errors (the reference client appends its
#: "not compliant" notice to every `error` event), and the text already sent cannot be taken
#: back. These name situations a retry or a new token can fix, so the client must see them.
STAYS_AN_ERROR: Final = frozenset(
    {
        "unauthenticated",
        "permission_denied",
        "resource_exhausted",
        "unavailable",
        "deadline_exceeded",
        "REASON_COMPLETION_OVERLOADED",
    }
)

#: texts for humans (Unknown payloads, error bodies in messages); keep them short
MAX_PAYLOAD_CHARS: Final = 1000

#: Connect code → (HTTP status, OpenAI error type) for the addon's answer. Codes from the Connect
#: specification; the statuses are what an OpenAI client expects for the same situation.
_CODE_MAP: Final[Mapping[str, tuple[int, str]]] = {
    "unauthenticated": (401, "authentication_error"),
    # Kimi uses permission_denied for expired/foreign tokens; the fix is the same: new token.
    "permission_denied": (401, "authentication_error"),
    "resource_exhausted": (429, "rate_limit_error"),
    # The chat (or file) the request names does not exist for this account: the client named
    # it (a made-up or deleted `conversation_id`), so it is the client's 404, not Kimi failing.
    "not_found": (404, "invalid_request_error"),
    "unavailable": (503, "server_error"),
    "deadline_exceeded": (503, "server_error"),
}
_OVERLOADED: Final = (503, "server_error")
#: A paywall needs a subscription: retrying (what clients do on 429) cannot help, so 402 with
#: OpenAI's "insufficient_quota" type, which clients already treat as "stop and tell the user".
_PAYWALL: Final = (402, "insufficient_quota")
_HTTP_STATUS_MAP: Final[Mapping[int, tuple[int, str]]] = {
    401: (401, "authentication_error"),
    403: (401, "authentication_error"),
    402: _PAYWALL,
    429: (429, "rate_limit_error"),
    503: (503, "server_error"),
    504: (503, "server_error"),
}
_DEFAULT: Final = (502, "upstream_error")


def connect_error(status: int, body: bytes) -> RemoteProtocolError:
    """The error for a non-200 answer to a Connect call (unary or streaming).

    Connect error bodies are JSON `{"code", "message", "details"}`; the code decides the status
    the client sees. A body that is not such JSON (a proxy's HTML page) falls back to the HTTP
    status. Moderation reasons are not special here: a refused call has no answer to end.
    """
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("code"), str):
        try:
            return _failure(_read_error(obj), prefix=f"HTTP {status}: ")
        except RemoteProtocolError:
            pass  # malformed details: fall back to the HTTP status below
    text = body.decode("utf-8", "replace").strip()
    answer_status, answer_type = _HTTP_STATUS_MAP.get(status, _DEFAULT)
    return RemoteProtocolError(
        f"Kimi answered HTTP {status}" + (f": {clip(text)}" if text else ""),
        status=answer_status,
        type=answer_type,
        code=f"http_{status}",
    )


def error_event(error: Any, *, after_text: bool = False) -> UpstreamEvent:
    """The event for an `error` object inside the stream (a message or the trailer);
    `after_text`: answer text was already given.

    Raises:
        RemoteProtocolError: the error object itself is malformed.
    """
    read = _read_error(read_object(error, "error"))
    moderation = any(marker in read.reason.upper() for marker in MODERATION_REASON_MARKERS)
    if moderation or (
        after_text and read.code not in STAYS_AN_ERROR and read.reason not in STAYS_AN_ERROR
    ):
        # A moderation stop ends the answer with finish_reason content_filter (see _upstream).
        return ContentFiltered(message=read.text)
    return UpstreamFailure(error=_failure(read))


@dataclass(frozen=True, slots=True, kw_only=True)
class _ReadError:
    code: str
    reason: str
    text: str
    paywall: bool


def _read_error(error: Mapping[str, Any]) -> _ReadError:
    code = read_string(error, "code", "error") or "unknown"
    reason = localized = ""
    paywall = False
    details = present(error.get("details"), [])
    if not isinstance(details, list):
        raise malformed("error.details")
    for detail in details:
        debug = read_object(
            present(read_object(detail, "error.details[]").get("debug"), {}), "debug"
        )
        reason = reason or read_string(debug, "reason", "debug")
        message = read_object(present(debug.get("localizedMessage"), {}), "debug.localizedMessage")
        localized = localized or read_string(message, "message", "debug.localizedMessage")
        # `paywall` is an object describing the offer; any value other than null/false counts
        paywall = paywall or debug.get("paywall") not in (None, False)
    text = localized or read_string(error, "message", "error") or code
    return _ReadError(code=code, reason=reason, text=text, paywall=paywall)


def _failure(read: _ReadError, *, prefix: str = "") -> RemoteProtocolError:
    if read.reason == "REASON_COMPLETION_OVERLOADED":
        status, kind = _OVERLOADED
    elif read.code == "resource_exhausted" and read.paywall:
        status, kind = _PAYWALL
    else:
        status, kind = _CODE_MAP.get(read.code, _DEFAULT)
    detail = read.code + (f", {read.reason}" if read.reason else "")
    return RemoteProtocolError(
        f"{prefix}Kimi: {read.text} ({detail})", status=status, type=kind, code=read.code
    )


# --- small readers --------------------------------------------------------------------------


def present(value: Any, default: Any) -> Any:
    """`value`, or `default` when the field is absent or null (JSON null = not set in proto3)."""
    return default if value is None else value


def read_object(value: Any, where: str) -> Mapping[str, Any]:
    """`value` when it is a JSON object, else the malformed-`where` error."""
    if not isinstance(value, dict):
        raise malformed(where)
    return value


def read_string(obj: Mapping[str, Any], key: str, where: str) -> str:
    """`obj[key]` as a string, "" when absent or null, else the malformed-`where.key` error."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise malformed(f"{where}.{key}")
    return value


def malformed(where: str) -> RemoteProtocolError:
    """The error for a known Connect message whose `where` has the wrong shape."""
    return RemoteProtocolError(
        f"Kimi sent a Connect message with a malformed {where}", code="bad_message"
    )


def clip(text: str) -> str:
    """`text`, cut to `MAX_PAYLOAD_CHARS` characters (marked with an ellipsis)."""
    return text if len(text) <= MAX_PAYLOAD_CHARS else text[:MAX_PAYLOAD_CHARS] + "…"
