"""ConnectDecoder: www.kimi.com's Connect-RPC chat stream → dialect-neutral `UpstreamEvent`s.

Theory of operation
-------------------
Bytes go through `EnvelopeDecoder` (split-safe framing, length cap), each payload is parsed as a
JSON object, and each object is read by the keys it carries. Kimi sends incremental updates
`{"op", "mask", "eventOffset", <container>}`; the container key says what changed:

- `chat` {id, name}                → ConversationStarted (once per id; repeats → Noise("chat"))
- `block` with mask `block.text[.content]`  → TextDelta
- `block` with mask `block.think[.content]` → ReasoningDelta
- `block` with mask `block.tool...`         → Noise("tool") (Kimi's own search tool progress)
- `block` with another mask                 → Unknown("block.<field>")
- `message` {id, role, status, refs.searchChunks}
      → SearchResult per new url, MessageId when an id is first seen for its role,
        Finished when the assistant message reaches MESSAGE_STATUS_COMPLETED
- `done`                           → Finished
- `heartbeat`                      → Noise("heartbeat")
- `error`                          → UpstreamFailure or ContentFiltered (see `_error_event`)
- anything else                    → Unknown(kind=<first key other than op/mask/eventOffset>)

The final envelope (flag 0x02) carries `{}` (nothing to report) or `{"error": ...}`
(→ UpstreamFailure). Data after it is a protocol error.

`set` versus `append`: `append` adds a delta; `set` gives a block's whole content. A `set` on a
block we have not sent anything for is its initial content. A later `set` is a rewrite, and
OpenAI deltas cannot retract text: if the new content extends what the client already has, only
the new suffix is emitted; otherwise the rewrite is ignored, counted in `rewrites`, and reported
as Noise("rewrite") so replay reports show it.

`Finished` is yielded at most once per stream, whichever of `done` and the completed assistant
message comes first (later ones are Noise("done") / nothing).

Field types are checked where we read them: a known container with the wrong shape is a
`RemoteProtocolError`, because silently dropping an answer is worse than failing loudly.
Unknown keys beside known ones are ignored (the protocol grows).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ._connect_frames import DEFAULT_MAX_MESSAGE_BYTES, Envelope, EnvelopeDecoder
from ._errors import RemoteProtocolError
from ._upstream import (
    ContentFiltered,
    ConversationStarted,
    Finished,
    MessageId,
    Noise,
    ReasoningDelta,
    SearchResult,
    TextDelta,
    Unknown,
    UpstreamEvent,
    UpstreamFailure,
)

__all__ = ["MODERATION_REASON_MARKERS", "ConnectDecoder", "connect_error"]

MESSAGE_COMPLETED: Final = "MESSAGE_STATUS_COMPLETED"
#: keys of the update envelope itself, not of what changed; skipped when naming an Unknown
_META_KEYS: Final = frozenset({"op", "mask", "eventOffset", "event_offset"})
#: Unknown payloads are for humans reading a replay report; keep them short
_MAX_PAYLOAD_CHARS: Final = 1000

#: Substrings of an error `reason` that mean a moderation stop. No public client has recorded
#: Kimi's exact moderation reasons yet, so this is a guess kept in one place: these words name
#: content policy and nothing else (we deliberately leave out "RISK", which Kimi also uses for
#: account risk control).
MODERATION_REASON_MARKERS: Final = ("SENSITIVE", "MODERATION", "CONTENT_FILTER", "CENSOR")

#: Connect code → (HTTP status, OpenAI error type) for the addon's answer. Codes from the Connect
#: specification; the statuses are what an OpenAI client expects for the same situation.
_CODE_MAP: Final[Mapping[str, tuple[int, str]]] = {
    "unauthenticated": (401, "authentication_error"),
    # Kimi uses permission_denied for expired/foreign tokens; the fix is the same: new token.
    "permission_denied": (401, "authentication_error"),
    "resource_exhausted": (429, "rate_limit_error"),
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


class ConnectDecoder:
    """Incremental decoder of the Connect chat stream (implements `StreamDecoder`).

    `feed(data)` takes any slice of the response body and returns the events it completes;
    `close()` ends the body. `rewrites` counts ignored `set` rewrites (see the module docstring).

    Raises (from `feed` / `close`):
        RemoteProtocolError: bad framing (see `EnvelopeDecoder`), a payload that is not a JSON
            object, a known message with the wrong shape, or data after the end of the stream.
            When earlier envelopes of the same read produced events, those are returned first
            and the next call raises; after that every call raises again.
    """

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._frames = EnvelopeDecoder(max_message_bytes=max_message_bytes)
        self._error: RemoteProtocolError | None = None
        self._ended = False
        self._finished = False
        self._chat_id = ""
        #: role → the last message id reported for it
        self._message_ids: dict[str, str] = {}
        self._urls: set[str] = set()
        #: (block id, "text" | "think") → the text the client has been given for that block
        self._sent: dict[tuple[str, str], str] = {}
        self.rewrites = 0

    def feed(self, data: bytes) -> list[UpstreamEvent]:
        """Decode `data`, a slice of the response body."""
        return self._guard(lambda: self._frames.feed(data))

    def close(self) -> list[UpstreamEvent]:
        """End the body; a stream cut inside an envelope raises `RemoteProtocolError`. A stream
        that simply stops (no `done`, no end-of-stream envelope) yields nothing here: whether
        that is a truncated answer is for the assembler to say (no `Finished` was seen)."""

        def finish() -> list[Envelope]:
            self._frames.close()
            return []

        return self._guard(finish)

    def _guard(self, step: Callable[[], list[Envelope]]) -> list[UpstreamEvent]:
        if self._error is not None:
            raise self._error
        events: list[UpstreamEvent] = []
        try:
            for envelope in step():
                events += self._envelope(envelope)
        except RemoteProtocolError as exc:
            self._error = exc
            if not events:
                raise
            # Return what the envelopes before the fault said (the client keeps that text);
            # the next call raises. This keeps the output independent of read boundaries.
        return events

    # --- one envelope ---------------------------------------------------------------------

    def _envelope(self, envelope: Envelope) -> list[UpstreamEvent]:
        if self._ended:
            raise RemoteProtocolError(
                "Kimi sent data after the end of the Connect stream", code="bad_frame"
            )
        obj = _parse(envelope.payload)
        if envelope.end_stream:
            self._ended = True
            error = obj.get("error")
            return [] if error is None else [_error_event(error)]
        events: list[UpstreamEvent] = []
        handled = False
        for key, handler in _HANDLERS:
            if key in obj:
                handled = True
                events += handler(self, obj[key], obj)
        if not handled:
            events.append(Unknown(kind=_kind(obj), payload=_dump(obj)))
        return events

    def _chat(self, chat: Any, obj: Mapping[str, Any]) -> list[UpstreamEvent]:
        chat = _object(chat, "chat")
        chat_id = _string(chat, "id", "chat")
        if not chat_id or chat_id == self._chat_id:
            return [Noise(kind="chat")]
        self._chat_id = chat_id
        return [
            ConversationStarted(conversation_id=chat_id, name=_string(chat, "name", "chat") or None)
        ]

    def _block(self, block: Any, obj: Mapping[str, Any]) -> list[UpstreamEvent]:
        block = _object(block, "block")
        op = obj.get("op")
        if op not in ("set", "append"):
            return [Unknown(kind=f"op:{op}", payload=_dump(obj))]
        events: list[UpstreamEvent] = []
        for field in _masked_fields(obj.get("mask"), block):
            if field in ("text", "think"):
                events += self._content(op, _string(block, "id", "block"), field, block.get(field))
            elif field == "tool":
                events.append(Noise(kind="tool"))
            else:
                events.append(Unknown(kind=f"block.{field}", payload=_dump(obj)))
        return events

    def _content(self, op: str, block_id: str, field: str, value: Any) -> list[UpstreamEvent]:
        holder = _object(_present(value, {}), f"block.{field}")
        content = _string(holder, "content", f"block.{field}")
        key = (block_id, field)
        sent = self._sent.get(key, "")
        if op == "append":
            delta = content
        elif content.startswith(sent):
            delta = content[len(sent) :]
        else:
            self.rewrites += 1
            return [Noise(kind="rewrite")]
        if not delta:
            return []
        self._sent[key] = sent + delta
        return [TextDelta(text=delta) if field == "text" else ReasoningDelta(text=delta)]

    def _message(self, message: Any, obj: Mapping[str, Any]) -> list[UpstreamEvent]:
        message = _object(message, "message")
        events: list[UpstreamEvent] = [*self._search_results(message.get("refs"))]
        message_id = _string(message, "id", "message")
        role = _string(message, "role", "message")
        if not role and message_id and message_id == self._message_ids.get("assistant"):
            role = "assistant"  # status updates name the message by id only
        if (
            message_id
            and role in ("assistant", "user")
            and self._message_ids.get(role) != message_id
        ):
            self._message_ids[role] = message_id
            events.append(MessageId(message_id=message_id, role=role))
        status = _string(message, "status", "message")
        if role == "assistant" and status == MESSAGE_COMPLETED:
            events += self._finish()
        return events or [Noise(kind="message")]

    def _search_results(self, refs: Any) -> list[UpstreamEvent]:
        if refs is None:
            return []
        chunks = _present(_object(refs, "message.refs").get("searchChunks"), [])
        if not isinstance(chunks, list):
            raise _shape("message.refs.searchChunks")
        events: list[UpstreamEvent] = []
        for chunk in chunks:
            chunk = _object(chunk, "searchChunks[]")
            # the page documents {"base": ...}; tool blocks wrap the same card in "searchResult"
            holder = _object(
                _present(chunk.get("searchResult"), chunk), "searchChunks[].searchResult"
            )
            base = _object(_present(holder.get("base"), {}), where := "searchChunks[].base")
            url = _string(base, "url", where)
            if url and url not in self._urls:
                self._urls.add(url)
                site, snippet = _string(base, "siteName", where), _string(base, "snippet", where)
                title = _string(base, "title", where)
                events.append(
                    SearchResult(
                        title=title, url=url, site_name=site or None, snippet=snippet or None
                    )
                )
        return events

    def _finish(self) -> list[UpstreamEvent]:
        if self._finished:
            return []
        self._finished = True
        return [Finished()]


_Handler = Callable[[ConnectDecoder, Any, Mapping[str, Any]], list[UpstreamEvent]]
#: the order in which keys of one message are read: text before the completion it may carry
_HANDLERS: Final[tuple[tuple[str, _Handler], ...]] = (
    ("chat", ConnectDecoder._chat),
    ("block", ConnectDecoder._block),
    ("message", ConnectDecoder._message),
    ("done", lambda self, _done, _obj: self._finish() or [Noise(kind="done")]),
    ("heartbeat", lambda _self, _beat, _obj: [Noise(kind="heartbeat")]),
    ("error", lambda _self, error, _obj: [_error_event(error)]),
)


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
        f"Kimi answered HTTP {status}" + (f": {_clip(text)}" if text else ""),
        status=answer_status,
        type=answer_type,
        code=f"http_{status}",
    )


# --- errors ---------------------------------------------------------------------------------


def _error_event(error: Any) -> UpstreamEvent:
    read = _read_error(_object(error, "error"))
    if any(marker in read.reason.upper() for marker in MODERATION_REASON_MARKERS):
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
    code = _string(error, "code", "error") or "unknown"
    reason = localized = ""
    paywall = False
    details = _present(error.get("details"), [])
    if not isinstance(details, list):
        raise _shape("error.details")
    for detail in details:
        debug = _object(_present(_object(detail, "error.details[]").get("debug"), {}), "debug")
        reason = reason or _string(debug, "reason", "debug")
        message = _object(_present(debug.get("localizedMessage"), {}), "debug.localizedMessage")
        localized = localized or _string(message, "message", "debug.localizedMessage")
        # `paywall` is an object describing the offer; any value other than null/false counts
        paywall = paywall or debug.get("paywall") not in (None, False)
    text = localized or _string(error, "message", "error") or code
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


def _parse(payload: bytes) -> dict[str, Any]:
    try:
        # decode first: json.loads(bytes) would also accept UTF-16/32, which Connect JSON is not
        obj = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        raise RemoteProtocolError("a Connect message is not valid JSON", code="bad_json") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("a Connect message is not a JSON object", code="bad_json")
    return obj


def _masked_fields(mask: Any, block: Mapping[str, Any]) -> list[str]:
    """The block fields an update touches. A FieldMask in JSON is comma-separated paths; a
    path of just `block` (or no mask at all) touches whatever the block carries."""
    if mask is not None and not isinstance(mask, str):
        raise _shape("mask")
    fields: list[str] = []
    for path in (mask or "block").split(","):
        parts = path.strip().split(".")
        if parts[0] != "block":
            continue
        named = parts[1:2] or [f for f in ("text", "think", "tool") if f in block]
        fields += [f for f in named if f not in fields]
    return fields


def _present(value: Any, default: Any) -> Any:
    """`value`, or `default` when the field is absent or null (JSON null = not set in proto3)."""
    return default if value is None else value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _shape(where)
    return value


def _string(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _shape(f"{where}.{key}")
    return value


def _shape(where: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"Kimi sent a Connect message with a malformed {where}", code="bad_message"
    )


def _kind(obj: Mapping[str, Any]) -> str:
    keys = list(obj)
    named = [k for k in keys if k not in _META_KEYS]
    return (named or keys or ["empty"])[0]


def _dump(obj: Mapping[str, Any]) -> str:
    return _clip(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_PAYLOAD_CHARS else text[:_MAX_PAYLOAD_CHARS] + "…"
