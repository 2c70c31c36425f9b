"""What Kimi said, in one vocabulary for both dialects.

Kimi speaks two wire dialects (docs/upstream-protocol.md): the legacy REST + SSE stream of
kimi.moonshot.cn and the Connect-RPC envelope stream of www.kimi.com. Each dialect has a decoder
that turns its bytes into the events below; one assembler (`_assembler.py`) turns these events into
OpenAI chunks. So everything OpenAI-facing is written once, and a dialect is only a decoder plus
its request builders.

    bytes ──▶ LegacyDecoder / ConnectDecoder ──▶ UpstreamEvent ... ──▶ assembler ──▶ OpenAI chunks

Decoders are incremental and split-safe: `feed(data)` may be called with any slice of the body
(down to one byte, or cutting a UTF-8 sequence), `close()` once at the end. They raise
`RemoteProtocolError` for bytes that break the dialect; they never raise anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ._errors import RemoteProtocolError

__all__ = [
    "ContentFiltered",
    "ConversationStarted",
    "Finished",
    "LengthStop",
    "MessageId",
    "Noise",
    "ReasoningDelta",
    "SearchResult",
    "StreamDecoder",
    "TextDelta",
    "Unknown",
    "UpstreamEvent",
    "UpstreamFailure",
]


class UpstreamEvent:
    """Base class of everything a decoder yields. Do not instantiate it directly."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta(UpstreamEvent):
    """The next piece of the answer text (legacy `cmpl`, Connect `block.text` append/set)."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningDelta(UpstreamEvent):
    """The next piece of the model's visible thinking (legacy `k1`, Connect `block.think`)."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchResult(UpstreamEvent):
    """One web search result the answer may cite (legacy `search_plus`/`get_res`, Connect
    `message.refs.searchChunks`)."""

    title: str
    url: str
    site_name: str | None = None
    snippet: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationStarted(UpstreamEvent):
    """Kimi reports the conversation id (Connect `chat.id`; the legacy dialect creates the
    conversation before the stream, so its decoder never yields this)."""

    conversation_id: str
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageId(UpstreamEvent):
    """An id a later call needs: the legacy `req` segment id (continuation after `length`), or
    the Connect assistant message id (the `parent_id` of the next turn)."""

    message_id: str
    role: str = "assistant"


@dataclass(frozen=True, slots=True, kw_only=True)
class LengthStop(UpstreamEvent):
    """The answer hit Kimi's output limit; it can be continued from the last segment."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentFiltered(UpstreamEvent):
    """Kimi stopped generating for content reasons (moderation). Not an error for the client:
    the answer ends with finish_reason `content_filter`, never with invented assistant text."""

    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamFailure(UpstreamEvent):
    """Kimi reported a failure inside the stream (rate limit, auth, overload, ...). The
    assembler raises `error` when it sees this event."""

    error: RemoteProtocolError


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished(UpstreamEvent):
    """The answer is complete (legacy `all_done`, Connect `done` / MESSAGE_STATUS_COMPLETED)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Noise(UpstreamEvent):
    """A known event that changes nothing for the client (ping, rename, loading, heartbeat...).
    Kept so that replay reports can count what was seen."""

    kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unknown(UpstreamEvent):
    """An event type we do not understand. Never fatal; counted so a capture shows what was
    missed (the protocol may have changed)."""

    kind: str
    payload: str = ""


class StreamDecoder(Protocol):
    """The interface of a dialect's response decoder."""

    def feed(self, data: bytes) -> list[UpstreamEvent]: ...

    def close(self) -> list[UpstreamEvent]: ...
