"""kimi-free-api's sans-I/O translator: OpenAI chat completions ⇄ Kimi's web protocol.

Everything the proxy decides about the protocol is decided here, with no I/O, clock or randomness,
so it can be tested without a network. See docs/translator.md.
"""

from __future__ import annotations

from ._errors import LocalProtocolError, RemoteProtocolError, TranslatorError
from ._plan import ChatPlan, FileSource, InlineFile, KimiCall, Message, ModelFlags, UrlFile
from ._upstream import (
    ContentFiltered,
    ConversationStarted,
    Finished,
    LengthStop,
    MessageId,
    Noise,
    ReasoningDelta,
    SearchResult,
    StreamDecoder,
    TextDelta,
    Unknown,
    UpstreamEvent,
    UpstreamFailure,
)

__all__ = [
    "ChatPlan",
    "ContentFiltered",
    "ConversationStarted",
    "FileSource",
    "Finished",
    "InlineFile",
    "KimiCall",
    "LengthStop",
    "LocalProtocolError",
    "Message",
    "MessageId",
    "ModelFlags",
    "Noise",
    "ReasoningDelta",
    "RemoteProtocolError",
    "SearchResult",
    "StreamDecoder",
    "TextDelta",
    "TranslatorError",
    "Unknown",
    "UpstreamEvent",
    "UpstreamFailure",
    "UrlFile",
]
