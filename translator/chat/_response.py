"""ResponseTranslator: Kimi's response bytes (either dialect) → OpenAI chat.completion.chunk dicts.

    decoder (LegacyDecoder / ConnectDecoder): bytes → UpstreamEvent ...
    Assembler (_assembler.py): UpstreamEvent → chunk dicts, one state machine

The addon feeds the body as it arrives and sends what comes back with `encode_sse`; after
`close()` it writes `SSE_DONE` itself, exactly once. For a non-streaming client it folds the same
chunks with `fold_completion`, so both forms cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Final

from translator._errors import RemoteProtocolError, TranslatorError
from translator._sse import encode_sse
from translator._upstream import StreamDecoder, UpstreamEvent
from translator.tools._shaper import AnswerShaper

from ._assembler import Assembler, ShapedAssembler, State

__all__ = ["ResponseTranslator"]

#: a chunk dict, or a plain text delta as (field, text) (see `Assembler.drain_parts`)
_Part = dict[str, Any] | tuple[str, str]
#: stands for the text when a chunk template is cut out of `encode_sse` (see `_template`)
_MARK: Final = "\x00kimi-free-api text\x00"
#: a str as JSON, as `encode_sse` (json.dumps with ensure_ascii=False) writes it
_json_str: Final[Callable[[str], str]] = json.encoder.encode_basestring


class ResponseTranslator:
    """One answer: feed Kimi's body, get OpenAI chunks.

    Args:
        decoder: the dialect's decoder for this body.
        completion_id: the chunk id (the proxy uses the Kimi conversation id, so a client can
            continue the conversation by it); None to take the conversation id the stream
            reports (Connect), or `fallback_id` if content comes first.
        fallback_id: the id when neither is known; by default derived from model, created and
            prompt (deterministic: the translator has no randomness).
        model, created, system_fingerprint: copied into every chunk.
        silent: search results go into annotations only, not into the text.
        include_usage: end with a usage chunk (`stream_options.include_usage`).
        prompt_text: the text sent to Kimi, for the prompt token estimate.
        max_continuations: how many times a `length` stop may be continued.
        shaper: tools, JSON output, stop and max_tokens (`AnswerShaper.for_plan`); None for a
            plain answer. With one, `cut` says when Kimi's stream need not be read further, and
            `close()` may stop short in REPAIR: then post `repair_prompt` into the same
            conversation, call `begin_repair(decoder)`, feed the new body and `close()` again.

    Errors: `feed`/`close` raise `RemoteProtocolError` for an in-stream failure or bytes that
    break the protocol; the translator is then in ERROR and every later call raises again.
    Chunks produced before the failure within the same `feed` are returned first, and the
    error is raised by the next call, so nothing Kimi said is lost.
    """

    def __init__(
        self,
        decoder: StreamDecoder,
        *,
        completion_id: str | None,
        model: str,
        created: int,
        silent: bool = False,
        include_usage: bool = False,
        prompt_text: str = "",
        max_continuations: int = 3,
        system_fingerprint: str | None = None,
        fallback_id: str | None = None,
        shaper: AnswerShaper | None = None,
    ) -> None:
        if fallback_id is None:
            digest = hashlib.sha256(f"{model}\0{created}\0{prompt_text}".encode()).hexdigest()
            fallback_id = "chatcmpl-" + digest[:29]
        self._decoder = decoder
        self._shaped = shaper is not None
        self._templates: dict[str, tuple[str, ...]] = {}
        self._asm = (Assembler if shaper is None else ShapedAssembler)(
            completion_id=completion_id,
            fallback_id=fallback_id,
            model=model,
            created=created,
            silent=silent,
            include_usage=include_usage,
            prompt_text=prompt_text,
            max_continuations=max_continuations,
            system_fingerprint=system_fingerprint,
            shaper=shaper,
        )

    @property
    def state(self) -> State:
        return self._asm.state

    @property
    def started(self) -> bool:
        """True once a chunk was produced: the reply can no longer be an HTTP error."""
        return self._asm.started

    @property
    def continuation_segment(self) -> str | None:
        """After a `length` stop with budget left: the segment id to continue from."""
        return self._asm.continuation_segment

    @property
    def conversation_id(self) -> str | None:
        """The conversation id the stream reported (Connect), if any."""
        return self._asm.conversation_id

    @property
    def last_message_id(self) -> str | None:
        """The last assistant message / segment id the stream reported, if any."""
        return self._asm.last_message_id

    @property
    def content(self) -> str:
        """The answer text written so far: what a client concatenates from `delta.content`
        (for a caller of `feed_sse`, which has no chunks to read it from)."""
        return self._asm.content

    @property
    def answer_text(self) -> str:
        """The answer as history text: `content`, then its tool calls in the call protocol. This
        is what the continuation key remembers, so a resent history with the calls matches."""
        return self._asm.answer_text

    @property
    def cut(self) -> bool:
        """True once a stop string or the token limit ended the answer: stop reading Kimi."""
        return self._asm.cut

    @property
    def repair_prompt(self) -> str | None:
        """After `close()` stopped short (state REPAIR): the repair turn to post."""
        return self._asm.repair_prompt if self._asm.state is State.REPAIR else None

    def begin_repair(self, decoder: StreamDecoder) -> None:
        """The repair turn was posted: later `feed`s are its body, parsed as a new answer whose
        calls (or JSON) replace the refused ones; nothing of the refused answer was shown.

        Raises:
            RuntimeError: no repair is pending (a bug in the caller).
        """
        if self._asm.state is not State.REPAIR:
            raise RuntimeError(f"begin_repair() in state {self._asm.state.name}")
        self._asm.resume_repair()
        self._decoder = decoder

    @property
    def finish_reason(self) -> str | None:
        """Why the answer ended (`stop`, `length`, `content_filter`), once that is known."""
        return self._asm.finish_reason

    @property
    def stop_string(self) -> str | None:
        """The request's stop string that ended the answer, if one did (Anthropic reports it as
        `stop_sequence`)."""
        return self._asm.stop_string

    @property
    def event_counts(self) -> dict[str, int]:
        """How many events of each kind were seen: UpstreamEvent class names, `Noise:<kind>`,
        `Unknown:<kind>`, plus `abrupt_end` and `continuation`."""
        return dict(self._asm.event_counts)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Translate the next slice of Kimi's body.

        Raises:
            RemoteProtocolError: see the class doc.
        """
        return self._asm.chunks(self._feed(data))

    def feed_sse(self, data: bytes) -> bytes:
        """`feed(data)` already written as SSE: exactly `b"".join(map(encode_sse, chunks))` for
        the chunks `feed` would return, but a plain text chunk is written from a template
        instead of building and dumping its dict (the hot path of a streamed answer).

        Raises:
            RemoteProtocolError: as `feed`.
        """
        return self._sse(self._feed(data))

    def close(self) -> list[dict[str, Any]]:
        """The body ended: the final chunks (finish chunk, then the usage chunk if asked for).
        The caller writes `SSE_DONE` after them. A second call returns [].

        Raises:
            RemoteProtocolError: see the class doc; also when no answer came at all.
        """
        return self._asm.chunks(self._close())

    def close_sse(self) -> bytes:
        """`close()` written as SSE, as `feed_sse` is to `feed` (without `SSE_DONE`)."""
        return self._sse(self._close())

    def begin_continuation(self, decoder: StreamDecoder) -> None:
        """Continue the answer with the body of a continuation call (after `continuation_segment`
        was posted): later `feed`s go to `decoder`. The previous decoder is closed first; what it
        still held can only be bookkeeping (content is not allowed after a length stop), or a
        moderation verdict, which ends the answer instead (`continuation_segment` is then None
        and the continuation body should not be fed).

        Raises:
            RuntimeError: no continuation is pending (a bug in the caller).
            RemoteProtocolError: the previous body ended badly.
        """
        if self._asm.state is not State.CONTINUE:
            raise RuntimeError(f"begin_continuation() in state {self._asm.state.name}")
        self._flush()  # no chunks: the table allows no content in CONTINUE
        if self._asm.state is State.CONTINUE:
            self._asm.resume()
            self._decoder = decoder

    def error_chunk(self, err: TranslatorError) -> dict[str, Any]:
        """The final `{"error": {...}}` object for a stream that already started (the addon
        sends it with `encode_sse`, then `SSE_DONE`)."""
        return err.to_openai()

    # -- internals ---------------------------------------------------------------------------

    def _feed(self, data: bytes) -> list[_Part]:
        self._check_open()
        if self._asm.cut:
            return []  # the answer was cut short: the rest of Kimi's body is not read
        try:
            events = self._decoder.feed(data)
        except RemoteProtocolError as err:
            raise self._asm.fail(err) from None
        return self._apply(events)

    def _close(self) -> list[_Part]:
        if self._asm.state is State.CLOSED:
            return []
        self._check_open()
        # A cut answer's body was left unread: its decoder may hold half an event.
        out = [] if self._asm.cut else self._flush()
        if self._asm.state is State.ERROR:
            return out  # the error follows at the next call
        self._asm.finish()  # raises when nothing of an answer came (then `out` is empty)
        return out + self._asm.drain_parts()

    def _sse(self, parts: list[_Part]) -> bytes:
        out: list[bytes] = []
        for part in parts:
            if isinstance(part, tuple):
                key, text = part
                template = self._templates.get(key)
                if template is None:
                    template = self._templates[key] = self._template(key)
                if template:
                    out.append((template[0] + _json_str(text) + template[1]).encode("utf-8"))
                else:
                    out.append(encode_sse(self._asm.chunk_for(key, text)))
            else:
                out.append(encode_sse(part))
        return b"".join(out)

    def _template(self, key: str) -> tuple[str, ...]:
        """The SSE text of this answer's plain `key` chunk, split where the text goes: cut out
        of `encode_sse` itself, so the fast path cannot drift from the one encoder. The chunk
        id and every other field are fixed once the answer started (a part exists only then).
        Empty when the marker is not found exactly once (a model name containing it)."""
        encoded = encode_sse(self._asm.chunk_for(key, _MARK)).decode("utf-8")
        pieces = encoded.split(_json_str(_MARK))
        return (pieces[0], pieces[1]) if len(pieces) == 2 else ()

    def _check_open(self) -> None:
        if self._asm.error is not None:
            raise self._asm.error
        if self._asm.state is State.CLOSED:
            raise RemoteProtocolError(
                "Kimi's answer was already closed", code="upstream_protocol_error"
            )

    def _flush(self) -> list[_Part]:
        try:
            events = self._decoder.close()
        except RemoteProtocolError as err:
            raise self._asm.fail(err) from None
        return self._apply(events)

    def _apply(self, events: list[UpstreamEvent]) -> list[_Part]:
        asm = self._asm
        try:
            if self._shaped:
                for ev in events:
                    asm.handle(ev)
                    if asm.cut:
                        break  # the rest of this read is past the cut
            else:
                for ev in events:
                    asm.handle(ev)
        except RemoteProtocolError:
            # Chunks already made go out first; `_check_open` raises the error next time.
            out = self._asm.drain_parts()
            if not out:
                raise
            return out
        return self._asm.drain_parts()
