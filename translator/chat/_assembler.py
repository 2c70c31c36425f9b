"""The answer's state machine: dialect-neutral `UpstreamEvent`s → OpenAI chunk dicts.

Theory of operation
-------------------
The state says how far the answer got; `_TRANSITIONS` lists every allowed (state, event class)
pair and the state it leads to. A pair that is not in the table is Kimi breaking its protocol:
the machine moves to ERROR and raises `RemoteProtocolError`. ERROR and CLOSED are final.

    IDLE       nothing of the answer yet (ids, pings and unknown events do not count)
    ANSWERING  text, reasoning or search results arrived
    CONTINUE   a LengthStop with a segment to continue from and budget left; the caller posts
               the continuation and calls `begin_continuation`
    ENDED      the finish reason is known (stop, length, content_filter); the finish chunk is
               written by `close()`, so a late ContentFiltered can still change it
    REPAIR     the body ended with an answer the `AnswerShaper` refused (an invalid tool call,
               JSON that does not match): the caller posts `repair_prompt` into the same Kimi
               conversation and calls `resume_repair`, which starts again at IDLE
    CLOSED     `close()` returned the final chunks
    ERROR      an UpstreamFailure or a protocol break; every later call raises

With an `AnswerShaper` (tools, JSON output, stop, max_tokens), answer text and reasoning go
through it and only what it returns is written; when it cuts the answer short (a stop string, the
token limit) the state becomes ENDED at once and `cut` is set, so the caller stops reading Kimi.
Tool calls are written at the end (`finish`): one `tool_calls` delta per call with its id, type
and name, then its arguments in pieces; finish_reason "tool_calls".

What each event does (besides its transition):

    TextDelta         a `content` delta (after a blank line if citation lines came first)
    ReasoningDelta    a `reasoning_content` delta
    SearchResult      a url_citation annotation (deduplicated by url); unless `silent`, also a
                      citation line `N. [title](url)` in the content: at once while no answer
                      text was written, else in a block after the answer, at the finish
    MessageId         remembered (assistant role only): `last_message_id`, and the continuation
                      segment after a LengthStop
    ConversationStarted  remembered: `conversation_id`, and the chunk id when none was given
    LengthStop        CONTINUE while the budget lasts and a segment is known, else ENDED(length)
    ContentFiltered   ENDED(content_filter): never invented assistant text
    Finished          ENDED(stop), unless a reason is already known
    UpstreamFailure   ERROR: its error is raised
    Noise, Unknown    counted in `event_counts` only

The role chunk `{"role": "assistant", "content": ""}` precedes the first chunk written, so an
answer only "starts" (and the caller loses the chance to fail over) when there is something to
show. Every chunk of one answer has the same id: the caller's `completion_id`, else the
conversation id reported in the stream before the first chunk, else `fallback_id`.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

from translator._errors import RemoteProtocolError
from translator._upstream import (
    ContentFiltered,
    ConversationStarted,
    Finished,
    LengthStop,
    MessageId,
    Noise,
    ReasoningDelta,
    SearchResult,
    TextDelta,
    Unknown,
    UpstreamEvent,
    UpstreamFailure,
)
from translator._usage import usage_for
from translator.tools._calls import ToolCall
from translator.tools._prompt import assistant_text
from translator.tools._shaper import AnswerShaper

__all__ = ["Assembler", "ShapedAssembler", "State"]


class State(enum.Enum):
    IDLE = "idle"
    ANSWERING = "answering"
    CONTINUE = "continue"
    ENDED = "ended"
    REPAIR = "repair"
    CLOSED = "closed"
    ERROR = "error"


_S = State
#: tool call arguments are streamed in pieces of at most this many characters
_ARGUMENT_PIECE: Final = 256
_QUIET: Final = (ConversationStarted, MessageId, Noise, Unknown)
_CONTENT: Final = (TextDelta, ReasoningDelta, SearchResult)

_TRANSITIONS: Final[dict[tuple[State, type[UpstreamEvent]], State]] = {
    **{(_S.IDLE, cls): _S.IDLE for cls in _QUIET},
    **{(_S.IDLE, cls): _S.ANSWERING for cls in _CONTENT},
    (_S.IDLE, LengthStop): _S.CONTINUE,
    (_S.IDLE, ContentFiltered): _S.ENDED,
    (_S.IDLE, Finished): _S.ENDED,
    **{(_S.ANSWERING, cls): _S.ANSWERING for cls in (*_QUIET, *_CONTENT)},
    # LengthStop lands in CONTINUE; `_length` moves on to ENDED when no continuation is possible.
    (_S.ANSWERING, LengthStop): _S.CONTINUE,
    (_S.ANSWERING, ContentFiltered): _S.ENDED,
    (_S.ANSWERING, Finished): _S.ENDED,
    # Kimi may close a length-stopped segment with `all_done`; the continuation still follows.
    **{(_S.CONTINUE, cls): _S.CONTINUE for cls in (*_QUIET, Finished)},
    (_S.CONTINUE, ContentFiltered): _S.ENDED,
    # After the end only bookkeeping may come, or a moderation verdict on what was said.
    **{(_S.ENDED, cls): _S.ENDED for cls in (*_QUIET, Finished, ContentFiltered)},
    # An in-stream failure is an error wherever it comes (even after an empty `done`).
    **{(state, UpstreamFailure): _S.ERROR for state in (_S.IDLE, _S.ANSWERING, _S.CONTINUE)},
    (_S.ENDED, UpstreamFailure): _S.ERROR,
}
#: the same table by state, then event class: one lookup per event, no key tuple to build
_NEXT: Final = {s: {c: t for (s2, c), t in _TRANSITIONS.items() if s2 is s} for s in State}


class Assembler:
    """Turns `UpstreamEvent`s into OpenAI `chat.completion.chunk` dicts (see module doc).
    Used through `ResponseTranslator`; it never sees bytes."""

    #: what each event does besides its transition: `_ACTIONS`, or `_SHAPED_ACTIONS` in the
    #: subclass that shapes the answer (set below, once the methods exist)
    _actions: ClassVar[Mapping[type[UpstreamEvent], Callable[[Assembler, Any], None]]]

    def __init__(
        self,
        *,
        completion_id: str | None,
        fallback_id: str,
        model: str,
        created: int,
        silent: bool,
        include_usage: bool,
        prompt_text: str,
        max_continuations: int,
        system_fingerprint: str | None,
        shaper: AnswerShaper | None = None,
    ) -> None:
        self.state = State.IDLE
        self.error: RemoteProtocolError | None = None
        self.conversation_id: str | None = None
        self.last_message_id: str | None = None
        self.event_counts: dict[str, int] = {}
        self.continuations = 0
        self._completion_id = completion_id
        self._fallback_id = fallback_id
        self._chunk_id: str | None = None
        self._model = model
        self._created = created
        self._silent = silent
        self._include_usage = include_usage
        self._prompt_text = prompt_text
        self._max_continuations = max_continuations
        self._fingerprint = system_fingerprint
        self._finish: str | None = None
        # Plain text deltas wait here as (field, text) and become dicts only in `chunks()`:
        # consecutive ones merge without touching a dict, and `drain_parts` skips the dict.
        self._out: list[dict[str, Any] | tuple[str, str]] = []
        self._content: list[str] = []
        self._content_len = 0  # in code points: annotation indices count code points
        self._reasoning: list[str] = []
        self._wrote_text = False
        self._header_citations = False
        self._annotations: list[dict[str, Any]] = []
        self._urls: set[str] = set()
        self._late: list[SearchResult] = []
        self._shaper = shaper
        self._calls: list[ToolCall] = []
        #: the repair turn to post while in REPAIR
        self.repair_prompt: str | None = None

    # -- the public face (through ResponseTranslator) -------------------------------------

    @property
    def started(self) -> bool:
        return self._chunk_id is not None

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def cut(self) -> bool:
        """True when the shaper ended the answer early: Kimi's stream need not be read on."""
        return self._shaper is not None and self._shaper.cut is not None

    @property
    def answer_text(self) -> str:
        """The answer as history text: the content, then the calls in the call protocol
        (what a client's resent assistant message with `tool_calls` renders to)."""
        return assistant_text(self.content, [(c.name, c.arguments) for c in self._calls])

    @property
    def finish_reason(self) -> str | None:
        return self._finish

    @property
    def stop_string(self) -> str | None:
        return None if self._shaper is None else self._shaper.stop_string

    @property
    def continuation_segment(self) -> str | None:
        return self.last_message_id if self.state is State.CONTINUE else None

    def count(self, key: str) -> None:
        self.event_counts[key] = self.event_counts.get(key, 0) + 1

    def drain_parts(self) -> list[dict[str, Any] | tuple[str, str]]:
        """The chunks made since the last call; a chunk whose delta is one text field and
        nothing else comes as (field, text), and `chunks()` makes dicts of them all. So an
        encoder can write those from a template (`ResponseTranslator.feed_sse`)."""
        out, self._out = self._out, []
        return out

    def chunks(self, parts: list[dict[str, Any] | tuple[str, str]]) -> list[dict[str, Any]]:
        """`parts` (from `drain_parts`) as chunk dicts, new ones the caller owns."""
        chunk = self._chunk
        return [chunk({p[0]: p[1]}, None) if isinstance(p, tuple) else p for p in parts]

    def chunk_for(self, key: str, text: str) -> dict[str, Any]:
        """The chunk dict of a (field, text) part, as `chunks()` makes it."""
        return self._chunk({key: text}, None)

    def fail(self, err: RemoteProtocolError) -> RemoteProtocolError:
        self.state = State.ERROR
        self.error = err
        return err

    def handle(self, ev: UpstreamEvent) -> None:
        """Apply one event; its chunks collect until `drain_parts()`.

        Raises:
            RemoteProtocolError: an UpstreamFailure, or an event the state does not allow.
        """
        if isinstance(ev, Noise):
            self.count(f"Noise:{ev.kind}")
        elif isinstance(ev, Unknown):
            self.count(f"Unknown:{ev.kind}")
        else:
            self.count(type(ev).__name__)
        # One dict lookup per step (by state, then exact class); this runs once per token.
        target = _NEXT[self.state].get(type(ev))
        if target is None:
            raise self.fail(
                RemoteProtocolError(
                    f"Kimi sent an unexpected {type(ev).__name__} in state {self.state.name}",
                    code="upstream_protocol_error",
                )
            )
        self.state = target
        action = self._actions.get(type(ev))
        if action is not None:
            action(self, ev)

    def _on_reasoning(self, ev: ReasoningDelta) -> None:
        if ev.text:
            self._delta("reasoning_content", ev.text)
            self._reasoning.append(ev.text)

    # With a shaper, text and reasoning go through it first (`ShapedAssembler` uses these).

    def _on_shaped_text(self, ev: TextDelta) -> None:
        shaper = self._shaper
        assert shaper is not None
        text = shaper.text(ev.text)
        self._check_cut()
        if text:
            self._text(text)

    def _on_shaped_reasoning(self, ev: ReasoningDelta) -> None:
        shaper = self._shaper
        assert shaper is not None
        text = shaper.reasoning(ev.text)
        self._check_cut()
        if text:
            self._delta("reasoning_content", text)
            self._reasoning.append(text)

    def _check_cut(self) -> None:
        shaper = self._shaper
        assert shaper is not None
        if shaper.cut is not None and self.state is not State.ENDED:
            self.state = State.ENDED
            self._finish = shaper.cut

    def _on_message_id(self, ev: MessageId) -> None:
        if ev.role == "assistant":
            self.last_message_id = ev.message_id

    def _on_conversation(self, ev: ConversationStarted) -> None:
        self.conversation_id = ev.conversation_id

    def _on_filtered(self, _ev: ContentFiltered) -> None:
        self._finish = "content_filter"

    def _on_finished(self, _ev: Finished) -> None:
        self._finish = self._finish or "stop"

    def _on_failure(self, ev: UpstreamFailure) -> None:
        raise self.fail(ev.error)

    def resume_repair(self) -> None:
        """The repair turn was posted: its body's events extend the same answer. Only called
        in REPAIR (`ResponseTranslator.begin_repair` checks)."""
        assert self._shaper is not None
        self._shaper.begin_repair()
        self.count("repair")
        self.repair_prompt = None
        self._finish = None
        self.state = State.IDLE

    def resume(self) -> None:
        """A continuation call was posted: its events extend the same answer. Only called in
        CONTINUE (`ResponseTranslator.begin_continuation` checks)."""
        self.continuations += 1
        self.count("continuation")
        self.state = State.ANSWERING

    def finish(self) -> None:
        """The body ended: write the final chunks (finish, then usage if asked for).

        Raises:
            RemoteProtocolError: nothing of an answer came (status 502), or the answer ended
                without any text (503).
        """
        match self.state:
            case State.IDLE:
                raise self.fail(
                    RemoteProtocolError(
                        "Kimi closed the stream without an answer", code="upstream_empty"
                    )
                )
            case State.ANSWERING:
                # Kimi hung up without `all_done`: what it said is kept and ends well-formed.
                self.count("abrupt_end")
                self._finish = "stop"
            case State.CONTINUE:
                self._finish = "length"
        if (
            self._shaper is not None
            and self._finish != "content_filter"  # moderation: nothing left to shape
            and not self._shape_end()
        ):
            return
        if self._finish == "stop" and not self._content and not self._reasoning and not self.cut:
            # A finished answer with no text at all: Kimi's throttling looks like this on the
            # Connect dialect (an empty `done`). Transient (503), so another account may try.
            raise self.fail(
                RemoteProtocolError(
                    "Kimi ended the answer without any text (often a sign that the account is "
                    "being throttled)",
                    status=503,
                    code="upstream_empty_answer",
                )
            )
        if self._late:
            self._citation_block()
        delta: dict[str, Any] = {}
        if self._annotations:
            delta["annotations"] = list(self._annotations)
        self._emit(delta, self._finish)
        if self._include_usage:
            usage = usage_for(
                prompt_text=self._prompt_text,
                completion_text="".join(self._content)
                + "".join(self._reasoning)
                + "".join(c.arguments for c in self._calls),
            )
            self._out.append({**self._envelope(), "choices": [], "usage": usage})
        self.state = State.CLOSED

    def _shape_end(self) -> bool:
        """Let the shaper decide the end of this body: False when a repair turn follows (state
        REPAIR). Writes its last text and the calls.

        Raises:
            RemoteProtocolError: the answer failed validation for good (502).
        """
        shaper = self._shaper
        assert shaper is not None
        outcome = shaper.end(wrote=self._wrote_text)
        if outcome.error is not None:
            raise self.fail(outcome.error)
        if outcome.text:
            self._text(outcome.text)
        if outcome.repair is not None:
            self.state = State.REPAIR
            self.repair_prompt = outcome.repair
            return False
        if outcome.calls:
            self._calls = outcome.calls
            self._emit_calls()
            self._finish = "tool_calls"
        elif shaper.cut is not None:
            self._finish = shaper.cut
        return True

    def _emit_calls(self) -> None:
        # Ids are derived from the answer (the translator has no randomness): the chunk id, the
        # message id of this turn, and the call itself, so they differ between turns.
        for index, call in enumerate(self._calls):
            seed = (
                f"{self._chunk_id}\0{self.last_message_id}\0{index}\0{call.name}\0{call.arguments}"
            )
            call_id = "call_" + hashlib.sha256(seed.encode()).hexdigest()[:24]
            head = {"index": index, "id": call_id, "type": "function"}
            head["function"] = {"name": call.name, "arguments": ""}
            self._emit({"tool_calls": [head]}, None)
            args = call.arguments
            for start in range(0, len(args), _ARGUMENT_PIECE):
                piece = args[start : start + _ARGUMENT_PIECE]
                self._emit(
                    {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, None
                )

    # -- events ----------------------------------------------------------------------------

    def _on_text(self, ev: TextDelta) -> None:
        text = ev.text
        if not text:
            return
        if not self._wrote_text and self._header_citations:
            text = "\n" + text  # a blank line between the citation list and the answer
        self._wrote_text = True
        self._write(text)

    def _text(self, text: str) -> None:
        """`_on_text` for text the shaper released."""
        if not self._wrote_text and self._header_citations:
            text = "\n" + text  # a blank line between the citation list and the answer
        self._wrote_text = True
        self._write(text)

    def _on_search(self, result: SearchResult) -> None:
        if not result.url or result.url in self._urls:
            return  # a result without a url cannot be cited (OpenAI requires one)
        self._urls.add(result.url)
        if self._silent:
            # Nothing in the text to point at: the span is empty, at the start.
            self._annotate(result, 0, 0)
        elif self._wrote_text:
            self._late.append(result)
        else:
            self._header_citations = True
            self._citation_line(result)

    def _on_length(self, _ev: LengthStop) -> None:
        if self.last_message_id is None or self.continuations >= self._max_continuations:
            self.state = State.ENDED
            self._finish = "length"

    # -- citations ---------------------------------------------------------------------------

    def _citation_line(self, result: SearchResult) -> None:
        prefix = f"{len(self._annotations) + 1}. "
        title = _md_label(result.title or result.site_name or result.url)
        link = f"[{title}]({_md_url(result.url)})"
        start = self._content_len + len(prefix)
        self._annotate(result, start, start + len(link))
        self._write(prefix + link + "\n")

    def _citation_block(self) -> None:
        # Late results exist only after answer text, so there is a last piece of content.
        self._write("\n" if self._content[-1].endswith("\n") else "\n\n")
        for result in self._late:
            self._citation_line(result)
        self._late.clear()

    def _annotate(self, result: SearchResult, start: int, end: int) -> None:
        self._annotations.append(
            {
                "type": "url_citation",
                "url_citation": {
                    "url": result.url,
                    "title": result.title or result.site_name or result.url,
                    "start_index": start,
                    "end_index": end,
                },
            }
        )

    # -- chunks ------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self._delta("content", text)
        self._content.append(text)
        self._content_len += len(text)

    def _delta(self, key: str, text: str) -> None:
        # Consecutive deltas of one kind within one `feed` become one chunk: fewer, larger
        # writes for the client, and the concatenated text is the same. Only plain deltas are
        # (field, text) parts, so the role, finish and usage chunks never merge.
        out = self._out
        if out:
            last = out[-1]
            if isinstance(last, tuple) and last[0] == key:
                out[-1] = (key, last[1] + text)
                return
        if self._chunk_id is None:
            self._begin()
        out.append((key, text))

    def _emit(self, delta: dict[str, Any], finish_reason: str | None) -> None:
        if self._chunk_id is None:
            self._begin()
        self._out.append(self._chunk(delta, finish_reason))

    def _begin(self) -> None:
        self._chunk_id = self._completion_id or self.conversation_id or self._fallback_id
        self._out.append(self._chunk({"role": "assistant", "content": ""}, None))

    def _envelope(self) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "id": self._chunk_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }
        if self._fingerprint is not None:
            # The spec types it as a string: without one the field is omitted, never null.
            envelope["system_fingerprint"] = self._fingerprint
        return envelope

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        chunk = self._envelope()
        chunk["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
        if self._include_usage:
            # OpenAI: with include_usage, every chunk but the last carries `usage: null`.
            chunk["usage"] = None
        return chunk


#: what each event does besides its transition (Noise and Unknown are only counted)
_ACTIONS: Final[dict[type[UpstreamEvent], Callable[[Assembler, Any], None]]] = {
    TextDelta: Assembler._on_text,
    ReasoningDelta: Assembler._on_reasoning,
    SearchResult: Assembler._on_search,
    MessageId: Assembler._on_message_id,
    ConversationStarted: Assembler._on_conversation,
    LengthStop: Assembler._on_length,
    ContentFiltered: Assembler._on_filtered,
    Finished: Assembler._on_finished,
    UpstreamFailure: Assembler._on_failure,
}
Assembler._actions = _ACTIONS
_SHAPED_ACTIONS: Final[dict[type[UpstreamEvent], Callable[[Assembler, Any], None]]] = {
    **_ACTIONS,
    TextDelta: Assembler._on_shaped_text,
    ReasoningDelta: Assembler._on_shaped_reasoning,
}


class ShapedAssembler(Assembler):
    """An `Assembler` whose text and reasoning go through its `AnswerShaper` first. A subclass,
    so the plain answer's per-event path stays exactly what it is without one."""

    _actions = _SHAPED_ACTIONS


def _md_label(text: str) -> str:
    flat = " ".join(text.split())
    return flat.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _md_url(url: str) -> str:
    # Characters that would end or break a Markdown link destination are percent-encoded;
    # line breaks and tabs cannot be part of a URL and are dropped.
    for ch, code in ((" ", "%20"), ("(", "%28"), (")", "%29"), ("<", "%3C"), (">", "%3E")):
        url = url.replace(ch, code)
    return "".join(url.split())
