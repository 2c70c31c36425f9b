"""OpenAI chat.completion.chunk dicts → Anthropic Messages stream events, and their fold.

The chat pipeline produces OpenAI chunks whatever the client speaks; `MessagesEncoder` turns
them, incrementally, into the events of Anthropic's Messages stream:

    first chunk            message_start (usage.input_tokens given by the caller, output 0)
    delta.reasoning_content  a `thinking` block: content_block_start, thinking_delta ...; before
                           its content_block_stop a signature_delta (see `thinking_signature`)
    delta.content          a `text` block: content_block_start, text_delta ...
    delta.tool_calls[i]    a `tool_use` block per call index: content_block_start with id and
                           name (input {}), then input_json_delta with each arguments piece
    finish_reason          remembered; `close()` stops the open block and writes
                           message_delta (stop_reason, stop_sequence, usage.output_tokens) and
                           message_stop
    usage chunk            output_tokens = its completion_tokens (else the same estimate as the
                           chat face's: `estimate_tokens` of everything written)

A change of kind closes the open block and opens the next one, so blocks never interleave and
their indexes count up from 0. Stop reasons: stop → end_turn (stop_sequence when the caller
says which sequence stopped the answer), length → max_tokens, tool_calls → tool_use,
content_filter → refusal.

`fold_message(events)` builds the non-streaming `Message` from the very same events, so the
two forms cannot disagree. `encode_event` writes one event as SSE (`event:` + `data:` lines).
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from translator._errors import TranslatorError
from translator._sse import encode_sse_event
from translator._usage import estimate_tokens

from ._errors import anthropic_error

__all__ = [
    "STOP_REASONS",
    "MessagesEncoder",
    "encode_event",
    "fold_message",
    "thinking_signature",
]

#: OpenAI finish_reason → Anthropic stop_reason
STOP_REASONS: Final[Mapping[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def thinking_signature(thinking: str) -> str:
    """The `signature` of a thinking block: ours, not Anthropic's, and deterministic
    (`kfa1.` + the SHA-256 of the thinking text, hex). It proves nothing; clients that must pass
    thinking blocks back with a signature get one, and the proxy drops thinking blocks from the
    history it receives (Kimi's reasoning is not replayed)."""
    return "kfa1." + hashlib.sha256(thinking.encode("utf-8")).hexdigest()


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One Messages stream event as SSE: `event: <type>`, `data: <JSON>`, a blank line."""
    return encode_sse_event(str(event["type"]), event)


class _Block(enum.Enum):
    NONE = "none"
    TEXT = "text"
    THINKING = "thinking"
    TOOL = "tool_use"


class MessagesEncoder:
    """One answer's chunks → Messages stream events (see the module doc).

    Args:
        model: the model name the client sent (echoed).
        input_tokens: the prompt's token estimate, reported in message_start and message_delta.
        message_id: the message id; by default `msg_` + the first chunk's id.
    """

    def __init__(self, *, model: str, input_tokens: int, message_id: str | None = None) -> None:
        self._model = model
        self._input_tokens = input_tokens
        self._message_id = message_id
        self._started = False
        self._closed = False
        self._block = _Block.NONE
        self._index = -1
        self._tool_index: int | None = None
        self._thinking: list[str] = []
        self._written: list[str] = []
        self._finish: str | None = None
        self._completion_tokens: int | None = None
        #: set by the caller when it knows which stop sequence ended the answer
        self.stop_sequence: str | None = None

    @property
    def started(self) -> bool:
        """True once message_start was produced."""
        return self._started

    def feed(self, chunks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The events for these chunks (possibly none)."""
        out: list[dict[str, Any]] = []
        for chunk in chunks:
            self._start(chunk, out)
            usage = chunk.get("usage")
            if usage:
                self._completion_tokens = int(usage["completion_tokens"])
            for choice in chunk.get("choices") or ():
                self._choice(choice, out)
        return out

    def close(self) -> list[dict[str, Any]]:
        """The final events: stop the open block, message_delta, message_stop.

        Raises:
            RuntimeError: called twice.
        """
        if self._closed:
            raise RuntimeError("MessagesEncoder.close() was already called")
        self._closed = True
        out: list[dict[str, Any]] = []
        self._start({}, out)
        self._stop_block(out)
        reason = STOP_REASONS.get(self._finish or "stop", "end_turn")
        if reason == "end_turn" and self.stop_sequence is not None:
            reason = "stop_sequence"
        output = self._completion_tokens
        if output is None:
            output = estimate_tokens("".join(self._written))
        out.append(
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": reason,
                    "stop_sequence": self.stop_sequence if reason == "stop_sequence" else None,
                },
                "usage": {"input_tokens": self._input_tokens, "output_tokens": output},
            }
        )
        out.append({"type": "message_stop"})
        return out

    @staticmethod
    def ping() -> dict[str, Any]:
        """A `ping` event, sent while Kimi is silent."""
        return {"type": "ping"}

    @staticmethod
    def error_event(err: TranslatorError) -> dict[str, Any]:
        """The `error` event that ends a stream which already started."""
        return anthropic_error(err)[1]

    # -- internals ----------------------------------------------------------------------------

    def _start(self, chunk: Mapping[str, Any], out: list[dict[str, Any]]) -> None:
        if self._started:
            return
        self._started = True
        if self._message_id is None:
            self._message_id = f"msg_{chunk.get('id') or 'kimi'}"
        out.append(
            {
                "type": "message_start",
                "message": {
                    "id": self._message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": self._model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
                },
            }
        )

    def _choice(self, choice: Mapping[str, Any], out: list[dict[str, Any]]) -> None:
        delta = choice.get("delta") or {}
        thought = delta.get("reasoning_content")
        if thought:
            self._open(_Block.THINKING, out, {"type": "thinking", "thinking": "", "signature": ""})
            self._thinking.append(thought)
            self._delta({"type": "thinking_delta", "thinking": thought}, thought, out)
        text = delta.get("content")
        if text:
            self._open(_Block.TEXT, out, {"type": "text", "text": ""})
            self._delta({"type": "text_delta", "text": text}, text, out)
        for call in delta.get("tool_calls") or ():
            self._tool_call(call, out)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]

    def _tool_call(self, call: Mapping[str, Any], out: list[dict[str, Any]]) -> None:
        function = call.get("function") or {}
        index = call.get("index", 0)
        if self._block is not _Block.TOOL or self._tool_index != index:
            self._stop_block(out)
            self._tool_index = index
            name = function.get("name") or ""
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{index}",
                "name": name,
                "input": {},
            }
            self._open(_Block.TOOL, out, block)
            self._written.append(name)
        arguments = function.get("arguments")
        if arguments:
            self._delta({"type": "input_json_delta", "partial_json": arguments}, arguments, out)

    def _open(self, kind: _Block, out: list[dict[str, Any]], block: dict[str, Any]) -> None:
        if self._block is kind and kind is not _Block.TOOL:
            return
        self._stop_block(out)
        self._block = kind
        self._index += 1
        out.append({"type": "content_block_start", "index": self._index, "content_block": block})

    def _delta(self, delta: dict[str, Any], text: str, out: list[dict[str, Any]]) -> None:
        self._written.append(text)
        out.append({"type": "content_block_delta", "index": self._index, "delta": delta})

    def _stop_block(self, out: list[dict[str, Any]]) -> None:
        if self._block is _Block.NONE:
            return
        if self._block is _Block.THINKING:
            signature = thinking_signature("".join(self._thinking))
            self._thinking.clear()
            out.append(
                {
                    "type": "content_block_delta",
                    "index": self._index,
                    "delta": {"type": "signature_delta", "signature": signature},
                }
            )
        out.append({"type": "content_block_stop", "index": self._index})
        self._block = _Block.NONE


def fold_message(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The `Message` object a non-streaming client gets, built from the stream's events.

    Raises:
        ValueError: no message_start, or the events end before message_stop.
    """
    message: dict[str, Any] | None = None
    partial: dict[int, list[str]] = {}
    stopped = False
    for event in events:
        kind = event["type"]
        if kind == "message_start":
            message = json.loads(json.dumps(event["message"]))
        elif message is None:
            raise ValueError(f"{kind} before message_start")
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
            partial[event["index"]] = []
        elif kind == "content_block_delta":
            _fold_delta(message["content"][event["index"]], event["delta"], partial[event["index"]])
        elif kind == "content_block_stop":
            block = message["content"][event["index"]]
            if block["type"] == "tool_use":
                block["input"] = json.loads("".join(partial[event["index"]]) or "{}")
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
        elif kind == "message_stop":
            stopped = True
    if message is None or not stopped:
        raise ValueError("the events end before message_stop: close() the encoder first")
    return message


def _fold_delta(block: dict[str, Any], delta: Mapping[str, Any], pieces: list[str]) -> None:
    kind = delta["type"]
    if kind == "text_delta":
        block["text"] += delta["text"]
    elif kind == "thinking_delta":
        block["thinking"] += delta["thinking"]
    elif kind == "signature_delta":
        block["signature"] = delta["signature"]
    else:  # input_json_delta: the arguments are only JSON once complete
        pieces.append(delta["partial_json"])
