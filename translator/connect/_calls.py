"""The calls of the Connect dialect (www.kimi.com), as `KimiCall` values.

- `chat_call` — the server-streaming `Chat` call: its body is ONE Connect envelope holding the
  JSON request; the answer is read by `ConnectDecoder`.
- `delete_chat_call` — the unary `DeleteChat` call (plain JSON body, Connect unary protocol);
  `DELETE_CHAT_SERVICES` lists the services it is reported under, in the order to try them,
  and `delete_outcome` reads an answer (done / chat gone / no such route / error).
- `session_headers` — the per-account headers www.kimi.com expects beside the bearer token.

None of these values contains the access token: `KimiCall`s are logged and compared, so the
addon adds `authorization` itself when it performs the call.

Field names are the proto names in snake_case (`chat_id`, `parent_id`, `kimiplus_id`), as the
web app sends them; Connect's JSON codec (protobuf JSON mapping) accepts them beside camelCase.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final, Literal

from translator._errors import LocalProtocolError, RemoteProtocolError
from translator._plan import ChatPlan, KimiCall

from ._frames import encode_envelope
from ._jwt import JwtClaims

__all__ = [
    "CHAT_SERVICE",
    "DELETE_CHAT_SERVICE",
    "DELETE_CHAT_SERVICES",
    "DeleteOutcome",
    "chat_call",
    "delete_chat_call",
    "delete_outcome",
    "session_headers",
    "validate_chat_id",
]

#: The streaming chat lives on the gateway service (kimi-web-protocol.md, "Chat").
CHAT_SERVICE: Final = "kimi.gateway.chat.v1.ChatService"
#: DeleteChat is reported under both services (research notes §B.7). First the one the most
#: complete live-verified client (OTK) calls, then the other one (kimi-web-protocol.md's).
DELETE_CHAT_SERVICES: Final = ("kimi.gateway.chat.v1.ChatService", "kimi.chat.v1.ChatService")
DELETE_CHAT_SERVICE: Final = DELETE_CHAT_SERVICES[0]

#: What an answer to DeleteChat says: "deleted"; "gone" (the service knows chats and says
#: this one is not there: Connect code `not_found`); "missing" (no such procedure here: HTTP
#: 404 without a Connect `not_found`, or code `unimplemented` — try the other service);
#: "error" (anything else: keep the chat and retry later).
DeleteOutcome = Literal["deleted", "gone", "missing", "error"]

#: Ids Kimi hands out are short [0-9a-z] strings (some clients see UUIDs); this charset keeps
#: anything that could act on a path, a header or JSON (/, ., quotes, controls, spaces) out.
_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SERVICE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
#: header values we build from token claims: visible ASCII only (no CR/LF injection)
_HEADER_VALUE: Final = re.compile(r"[\x21-\x7e]{1,256}")

#: Without it the gateway serves an older A/B bucket (a stale model list): research notes §B.4.
MSH_VERSION: Final = ("x-msh-version", "2.0.0")
_STREAM_HEADERS: Final = (
    ("content-type", "application/connect+json"),
    ("connect-protocol-version", "1"),
    MSH_VERSION,
    # the decoder reads bytes as they arrive: no HTTP-level compression
    ("accept-encoding", "identity"),
)
UNARY_HEADERS: Final = (
    ("content-type", "application/json"),
    ("connect-protocol-version", "1"),
    MSH_VERSION,
)
_SEARCH_TOOL: Final = {"type": "TOOL_TYPE_SEARCH", "search": {}}


def validate_chat_id(value: str, *, param: str = "conversation_id") -> str:
    """Return `value` if it is a safe Kimi chat or message id.

    Raises:
        LocalProtocolError: the id is empty, too long, or has characters outside
            `[A-Za-z0-9_-]`; `param` names the client's field.
    """
    if not _ID.fullmatch(value):
        raise LocalProtocolError(
            "not a valid Kimi chat id (expected 1-128 characters of A-Z, a-z, 0-9, _ and -)",
            param=param,
            code="invalid_conversation_id",
        )
    return value


def chat_call(
    plan: ChatPlan,
    *,
    chat_id: str = "",
    parent_id: str = "",
    file_ids: Sequence[str] = (),
    service: str = CHAT_SERVICE,
) -> KimiCall:
    """The streaming `Chat` call for `plan`.

    An empty `chat_id` starts a new chat (the stream reports its id); `chat_id` plus
    `parent_id` (the previous assistant message) continue one. Empty ids are left out of the
    JSON rather than sent as "": one public client reports that Kimi refuses `""`, and in
    proto3 JSON an absent field and its default value mean the same.

    Raises:
        LocalProtocolError: `chat_id` or `parent_id` is not a safe id, or `service` is not a
            dotted service name.
        RemoteProtocolError: a file id (from Kimi's upload answer) is not a safe id.
    """
    flags = plan.flags
    message: dict[str, Any] = {"role": "user", "scenario": flags.scenario}
    if parent_id:
        message["parent_id"] = validate_chat_id(parent_id)
    message["blocks"] = [
        {"message_id": "", "text": {"content": plan.prompt}},
        *({"file": {"id": _file_id(fid)}} for fid in file_ids),
    ]
    payload: dict[str, Any] = {"scenario": flags.scenario}
    if chat_id:
        payload["chat_id"] = validate_chat_id(chat_id)
    if flags.use_search:
        payload["tools"] = [_SEARCH_TOOL]
    payload["message"] = message
    payload["options"] = {"thinking": flags.thinking}
    if flags.model is not None:
        # a catalog id from GetAvailableModels (see _connect_models), e.g. "k2d6-chat"
        payload["options"]["model"] = flags.model
    # Only an agent scenario names a Kimi+ agent: the flags' default kimiplus_id ("kimi") is
    # the legacy dialect's, and sending it here would ask for an agent we do not mean.
    if flags.agent_mode is not None:
        payload["kimiplus_id"] = flags.kimiplus_id
        payload["agent_mode"] = flags.agent_mode
    return KimiCall(
        method="POST",
        path=f"/apiv2/{_service(service)}/Chat",
        headers=_STREAM_HEADERS,
        content=encode_envelope(payload),
        stream=True,
    )


def delete_chat_call(chat_id: str, *, service: str = DELETE_CHAT_SERVICE) -> KimiCall:
    """The unary `DeleteChat` call (a Connect unary call: plain JSON in, JSON out).

    Raises:
        LocalProtocolError: `chat_id` is not a safe id or `service` not a dotted name.
    """
    return KimiCall(
        method="POST",
        path=f"/apiv2/{_service(service)}/DeleteChat",
        headers=UNARY_HEADERS,
        json={"chat_id": validate_chat_id(chat_id)},
    )


def delete_outcome(status: int, body: bytes) -> DeleteOutcome:
    """Read the answer (`status`, `body`) to a `delete_chat_call` (see `DeleteOutcome`).

    A route that does not exist answers like a router does (HTTP 404 with a plain body, or a
    Connect `unimplemented`), so only an explicit Connect `not_found` counts as "this chat is
    gone"; a bare 404 is a missing route, and the caller tries the other service before it
    believes the chat is gone.
    """
    if status < 400:
        return "deleted"
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    code = obj.get("code") if isinstance(obj, dict) else None
    if code == "unimplemented" or (status == 404 and code != "not_found"):
        return "missing"
    return "gone" if code == "not_found" else "error"


def session_headers(
    claims: JwtClaims,
    *,
    timezone: str,
    version: str = "2.0.0",
    language: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """The account headers www.kimi.com expects, derived from the access token's claims.

    `x-traffic-id` ← `sub`, `x-msh-session-id` ← `ssid`, `x-msh-device-id` ← `device_id` (each
    left out when the token lacks it), plus `x-msh-platform: web`, `x-msh-version` (one source
    reports that without 2.0.0 the model list is outdated), `r-timezone` and, if given,
    `x-language`. The bearer token itself is not included (see the module docstring).

    Raises:
        LocalProtocolError: `timezone`, `version` or `language` is not a plain header value.
        RemoteProtocolError: a claim is not a plain header value (it would allow header
            injection).
    """
    headers: list[tuple[str, str]] = []
    for name, claim in (
        ("x-traffic-id", claims.sub),
        ("x-msh-session-id", claims.ssid),
        ("x-msh-device-id", claims.device_id),
    ):
        if claim is not None:
            if not _HEADER_VALUE.fullmatch(claim):
                raise RemoteProtocolError(
                    f"the access token's claim for {name} is not a plain header value",
                    status=401,
                    type="authentication_error",
                    code="invalid_jwt",
                )
            headers.append((name, claim))
    headers += [("x-msh-platform", "web"), ("x-msh-version", _option(version, "version"))]
    headers.append(("r-timezone", _option(timezone, "timezone")))
    if language is not None:
        headers.append(("x-language", _option(language, "language")))
    return tuple(headers)


def _file_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise RemoteProtocolError("Kimi returned an unusable file id", code="bad_file_id")
    return value


def _service(value: str) -> str:
    if not _SERVICE.fullmatch(value):
        raise LocalProtocolError(f"not a Connect service name: {value!r}", param="service")
    return value


def _option(value: str, param: str) -> str:
    if not _HEADER_VALUE.fullmatch(value):
        raise LocalProtocolError(f"not a plain header value: {value!r}", param=param)
    return value
