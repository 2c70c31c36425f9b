"""ConnectDecoder: www.kimi.com's Connect-RPC chat stream → dialect-neutral `UpstreamEvent`s.

Theory of operation
-------------------
Bytes go through `EnvelopeDecoder` (split-safe framing, length cap), each payload is parsed as a
JSON object, and each object is read by the keys it carries. Kimi sends incremental updates
`{"op", "mask", "eventOffset", <container>}`; the container key says what changed:

- `chat` {id, name}                → ConversationStarted (once per id; repeats → Noise("chat"))
- `block` with mask `block.text[.content]`  → TextDelta, or ReasoningDelta in the thinking
                                              phase (below)
- `block` with mask `block.think[.content]` → ReasoningDelta
- `block` with mask `block.multiStage`      → Noise("stage"); opens or closes the thinking phase
- `block` with mask `block.tool...`         → SearchResult per new url in the tool's
      `contents[].searchResult` (Kimi's own `web_search` tool), else Noise("tool") (the
      tool's name and argument fragments)
- `block` with another mask                 → Unknown("block.<field>")
- `message` {id, role, status, refs.searchChunks}
      → SearchResult per new url, MessageId when an id is first seen for its role,
        Finished when the assistant message reaches MESSAGE_STATUS_COMPLETED
- `done`                           → Finished
- `heartbeat`                      → Noise("heartbeat")
- `error`                          → UpstreamFailure or ContentFiltered (see `_connect_errors`)
- anything else                    → Unknown(kind=<first key other than op/mask/eventOffset>)

Thinking sent as text. Besides `think` blocks, Kimi marks reasoning two ways (research notes
§B.6): a text block whose `text.flags` is "thinking" (the flag may come only on the block's
first update: it is remembered per block id, and a later "answer" flag clears it), and a
`multiStage` block whose FIRST stage is `STAGE_NAME_THINKING` with a status other than
completed — while that holds, unflagged text is reasoning; once the stage completes (or
another stage comes first) unflagged text is answer again.

An `error` after answer text whose code is not one of auth / rate / overload ends the answer as
a moderation stop, keeping the text (see `_connect_errors.error_event`).

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

The hot path: most envelopes are plain deltas, `{"op":"append","mask":"block.text.content",
"block":{"id":..,"text":{"content":".."}}}` (or `think`). While the framing holds no partial
envelope, `feed` reads such envelopes straight from the read (no `Envelope`, no handler table)
with the JSON scanner, and stops at the first envelope that is anything else, which takes the
exact path above. Both give the same events and errors for any split of the body.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from json.scanner import make_scanner
from typing import Any, Final

from translator._errors import RemoteProtocolError
from translator._upstream import (
    ConversationStarted,
    Finished,
    MessageId,
    Noise,
    ReasoningDelta,
    SearchResult,
    TextDelta,
    Unknown,
    UpstreamEvent,
)

from ._errors import (
    MODERATION_REASON_MARKERS,
    clip,
    connect_error,
    error_event,
    malformed,
    present,
    read_object,
    read_string,
)
from ._frames import DEFAULT_MAX_MESSAGE_BYTES, Envelope, EnvelopeDecoder

__all__ = ["MODERATION_REASON_MARKERS", "ConnectDecoder", "connect_error"]

MESSAGE_COMPLETED: Final = "MESSAGE_STATUS_COMPLETED"
#: keys of the update envelope itself, not of what changed; skipped when naming an Unknown
_META_KEYS: Final = frozenset({"op", "mask", "eventOffset", "event_offset"})
#: json.loads without its wrapper: (object, end index), exactly what json.loads would parse when
#: the object spans the whole text (json.loads only adds whitespace skipping and error messages)
_scan: Final = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed is off
#: the masks of a plain delta (what the fast path reads) → the block field they name
_DELTA_MASKS: Final[Mapping[str, str]] = {
    "block.text.content": "text",
    "block.text": "text",
    "block.think.content": "think",
    "block.think": "think",
}
#: handler keys other than `block`: a message with one of them is not a plain delta
_NOT_DELTA_KEYS: Final = frozenset({"chat", "message", "done", "heartbeat", "error"})
#: the stage whose open state makes unflagged text reasoning, and the text flag that does
THINKING_STAGE: Final = "STAGE_NAME_THINKING"
THINKING_FLAG: Final = "thinking"
#: joined into one string past this many pieces: bounded memory without quadratic copying
_MAX_PIECES: Final = 64


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
        #: (block id, "text" | "think") → the text the client has been given for that block,
        #: in pieces (appending to one string would copy the whole answer at every delta)
        self._sent: dict[tuple[str, str], list[str]] = {}
        #: text block ids flagged "thinking"; and whether a thinking stage is open
        self._thinking_blocks: set[str] = set()
        self._thinking_stage = False
        #: answer text was given (an unknown error after it is a moderation stop)
        self._answered = False
        self.rewrites = 0

    def feed(self, data: bytes) -> list[UpstreamEvent]:
        """Decode `data`, a slice of the response body."""
        # Plain deltas first, while no envelope is half read. Other bytes-like reads (memoryview
        # has no `.decode`) take the exact path.
        if (
            self._error is None
            and not self._ended
            and not self._frames.buffered
            and type(data) is bytes
        ):
            events, used = self._fast(data)
            if events:
                if used == len(data):
                    return events
                rest = data[used:]
                try:
                    return events + self._guard(lambda: self._frames.feed(rest))
                except RemoteProtocolError:
                    return events  # `_guard` kept the error: the next call raises it
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

    def _fast(self, data: bytes) -> tuple[list[UpstreamEvent], int]:
        """The plain deltas at the start of `data` (whole envelopes only), and where they end.
        Every condition below is one the exact path checks to give the same single delta; what
        fails one (an odd shape, bad JSON, an empty delta, a partial envelope) is left to it."""
        events: list[UpstreamEvent] = []
        start = 0
        size = len(data)
        limit = self._frames.max_message_bytes
        while size - start >= 5:
            # the 5-byte envelope header (see _connect_frames): flags 0, big-endian length
            length = int.from_bytes(data[start + 1 : start + 5])
            end = start + 5 + length
            if data[start] or end > size or length > limit:
                break
            try:
                text = data[start + 5 : end].decode("utf-8")
                obj, stop = _scan(text, 0)
            except (StopIteration, ValueError, RecursionError):
                break
            if (
                stop != len(text)
                or type(obj) is not dict
                or obj.get("op") != "append"
                or type(mask := obj.get("mask")) is not str
                or (field := _DELTA_MASKS.get(mask)) is None
                or type(block := obj.get("block")) is not dict
                or not _NOT_DELTA_KEYS.isdisjoint(obj)
                or type(block_id := block.get("id")) is not str
                or type(holder := block.get(field)) is not dict
                or type(delta := holder.get("content")) is not str
                or not delta
                or "flags" in holder
            ):
                break
            self._record((block_id, field), delta)
            events.append(self._delta(field, block_id, delta))
            start = end
        return events, start

    def _delta(self, field: str, block_id: str, delta: str) -> UpstreamEvent:
        """The event for new `field` ("text" or "think") content of block `block_id`."""
        if field == "text" and not (self._thinking_stage or block_id in self._thinking_blocks):
            self._answered = True
            return TextDelta(text=delta)
        return ReasoningDelta(text=delta)

    def _record(self, key: tuple[str, str], delta: str) -> None:
        pieces = self._sent.get(key)
        if pieces is None:
            self._sent[key] = [delta]
        else:
            pieces.append(delta)
            if len(pieces) > _MAX_PIECES:
                pieces[:] = ["".join(pieces)]

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
            return [] if error is None else [error_event(error, after_text=self._answered)]
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
        chat = read_object(chat, "chat")
        chat_id = read_string(chat, "id", "chat")
        if not chat_id or chat_id == self._chat_id:
            return [Noise(kind="chat")]
        self._chat_id = chat_id
        return [
            ConversationStarted(
                conversation_id=chat_id, name=read_string(chat, "name", "chat") or None
            )
        ]

    def _block(self, block: Any, obj: Mapping[str, Any]) -> list[UpstreamEvent]:
        block = read_object(block, "block")
        op = obj.get("op")
        if op not in ("set", "append"):
            return [Unknown(kind=f"op:{op}", payload=_dump(obj))]
        events: list[UpstreamEvent] = []
        for field in _masked_fields(obj.get("mask"), block):
            if field in ("text", "think"):
                events += self._content(
                    op, read_string(block, "id", "block"), field, block.get(field)
                )
            elif field == "tool":
                events += self._tool(block.get("tool"))
            elif field == "multiStage":
                events.append(self._stages(block.get("multiStage")))
            else:
                events.append(Unknown(kind=f"block.{field}", payload=_dump(obj)))
        return events

    def _content(self, op: str, block_id: str, field: str, value: Any) -> list[UpstreamEvent]:
        holder = read_object(present(value, {}), f"block.{field}")
        content = read_string(holder, "content", f"block.{field}")
        if field == "text" and "flags" in holder:
            if read_string(holder, "flags", "block.text") == THINKING_FLAG:
                self._thinking_blocks.add(block_id)
            else:
                self._thinking_blocks.discard(block_id)
        key = (block_id, field)
        if op == "append":
            delta = content
        elif content.startswith(sent := "".join(self._sent.get(key, ()))):
            delta = content[len(sent) :]
        else:
            self.rewrites += 1
            return [Noise(kind="rewrite")]
        if not delta:
            return []
        self._record(key, delta)
        return [self._delta(field, block_id, delta)]

    def _stages(self, value: Any) -> UpstreamEvent:
        stages = present(read_object(present(value, {}), "block.multiStage").get("stages"), [])
        if not isinstance(stages, list):
            raise malformed("block.multiStage.stages")
        first = read_object(stages[0], "block.multiStage.stages[]") if stages else {}
        where = "block.multiStage.stages[]"
        self._thinking_stage = (
            read_string(first, "name", where) == THINKING_STAGE
            and "completed" not in read_string(first, "status", where).lower()
        )
        return Noise(kind="stage")

    def _tool(self, value: Any) -> list[UpstreamEvent]:
        """A tool block update: search cards in `contents[].searchResult` become results; the
        name and the argument fragments (`mask: block.tool.args`) are noise."""
        contents = present(read_object(present(value, {}), "block.tool").get("contents"), [])
        if not isinstance(contents, list):
            raise malformed("block.tool.contents")
        cards = [
            card
            for item in contents
            if (card := read_object(item, "block.tool.contents[]").get("searchResult")) is not None
        ]
        return self._cards(cards, "block.tool.contents[].searchResult") or [Noise(kind="tool")]

    def _message(self, message: Any, obj: Mapping[str, Any]) -> list[UpstreamEvent]:
        message = read_object(message, "message")
        events: list[UpstreamEvent] = [*self._search_results(message.get("refs"))]
        message_id = read_string(message, "id", "message")
        role = read_string(message, "role", "message")
        if not role and message_id and message_id == self._message_ids.get("assistant"):
            role = "assistant"  # status updates name the message by id only
        if (
            message_id
            and role in ("assistant", "user")
            and self._message_ids.get(role) != message_id
        ):
            self._message_ids[role] = message_id
            events.append(MessageId(message_id=message_id, role=role))
        status = read_string(message, "status", "message")
        if role == "assistant" and status == MESSAGE_COMPLETED:
            events += self._finish()
        return events or [Noise(kind="message")]

    def _search_results(self, refs: Any) -> list[UpstreamEvent]:
        if refs is None:
            return []
        chunks = present(read_object(refs, "message.refs").get("searchChunks"), [])
        if not isinstance(chunks, list):
            raise malformed("message.refs.searchChunks")
        holders = [
            # the page documents {"base": ...}; tool blocks wrap the same card in "searchResult"
            present(read_object(chunk, "searchChunks[]").get("searchResult"), chunk)
            for chunk in chunks
        ]
        return self._cards(holders, "searchChunks[].searchResult")

    def _cards(self, holders: list[Any], where_holder: str) -> list[UpstreamEvent]:
        """SearchResult for each card `{base: {title, url, siteName, snippet}}` with a new url."""
        events: list[UpstreamEvent] = []
        for holder in holders:
            holder = read_object(holder, where_holder)
            base = read_object(present(holder.get("base"), {}), where := f"{where_holder}.base")
            url = read_string(base, "url", where)
            if url and url not in self._urls:
                self._urls.add(url)
                site, snippet = (
                    read_string(base, "siteName", where),
                    read_string(base, "snippet", where),
                )
                title = read_string(base, "title", where)
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
    ("error", lambda self, error, _obj: [error_event(error, after_text=self._answered)]),
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
        raise malformed("mask")
    fields: list[str] = []
    for path in (mask or "block").split(","):
        parts = path.strip().split(".")
        if parts[0] != "block":
            continue
        named = parts[1:2] or [f for f in ("text", "think", "tool", "multiStage") if f in block]
        fields += [f for f in named if f not in fields]
    return fields


def _kind(obj: Mapping[str, Any]) -> str:
    keys = list(obj)
    named = [k for k in keys if k not in _META_KEYS]
    return (named or keys or ["empty"])[0]


def _dump(obj: Mapping[str, Any]) -> str:
    return clip(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
