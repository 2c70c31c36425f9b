"""The one pipeline's chat chunks → OpenAI Responses API stream events, and the Response object.

Theory of operation
-------------------
The chat pipeline produces `chat.completion.chunk` dicts (`ResponseTranslator`); this encoder
turns them, as they come, into the Responses API's event sequence. One output item is open at a
time; a chunk of another kind closes it and opens the next:

    first chunk           response.created, response.in_progress (status "in_progress")
    reasoning_content     a `reasoning` item: output_item.added, content_part.added
                          (reasoning_text), response.reasoning_text.delta ...
    content               a `message` item: output_item.added, content_part.added (output_text),
                          response.output_text.delta ...
    tool_calls            one `function_call` item per call (a delta with an `id` starts one):
                          output_item.added, response.function_call_arguments.delta ...
    annotations           (the finish chunk's url_citations) response.output_text.annotation.added
                          on the open message, with indices made relative to its text
    usage                 kept for the terminal event (input/output/total, reasoning tokens)
    close()               the open item's .done events (text/arguments, content_part,
                          output_item), then response.completed — or response.incomplete with
                          the reason, after a `length` (max_output_tokens) or `content_filter` stop
    fail(err)             response.failed with the error; items still open end "incomplete"

Every event carries `sequence_number` (0, 1, 2, ... in order). Item ids are derived from the
response id, so the encoder is deterministic. `fold_response` rebuilds the Response object from
the events alone (texts from the deltas, items from their .added/.done events, the envelope
from the terminal event), which is what a non-streaming client gets: the two forms are made of
the same events and cannot disagree.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from translator._errors import RemoteProtocolError, TranslatorError
from translator._usage import estimate_tokens

__all__ = ["ResponsesEncoder", "fold_response"]

#: chat finish_reason → why a Responses answer is incomplete (others complete it)
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponsesEncoder:
    """One response: feed chat chunks, get Responses stream events.

    Args:
        response_id: the Response's id ("resp_..."); item ids are derived from it.
        created_at: unix seconds, copied into the Response.
        echo: the request fields a Response repeats (`ResponsesPlan.echo`).
    """

    def __init__(self, *, response_id: str, created_at: int, echo: Mapping[str, Any]) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self._echo = dict(echo)
        self._seq = 0
        self._output: list[dict[str, Any]] = []  # items, the open one (if any) last
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool_call index → its item
        self._text_start = 0  # where the open message's text starts in the chat content
        self._content_len = 0  # chat content written so far
        self._reasoning: list[str] = []
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self.started = False
        self.ended = False

    @property
    def finish_reason(self) -> str | None:
        """The chat finish_reason seen so far (`stop`, `tool_calls`, `length`, ...)."""
        return self._finish

    def feed(self, chunks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The events for the next chunks (the first ones also start the response)."""
        out: list[dict[str, Any]] = []
        for chunk in chunks:
            if not self.started:
                self.started = True
                out.append(self._event("response.created", response=self.snapshot("in_progress")))
                out.append(
                    self._event("response.in_progress", response=self.snapshot("in_progress"))
                )
            if chunk.get("usage"):
                self._usage = dict(chunk["usage"])
            for choice in chunk.get("choices") or ():
                self._delta(choice.get("delta") or {}, out)
                self._finish = choice.get("finish_reason") or self._finish
        return out

    def close(self, *, completed_at: int) -> list[dict[str, Any]]:
        """The answer ended: close the open item and write the terminal event."""
        reason = _INCOMPLETE.get(self._finish or "stop")
        out = self._close_item("completed" if reason is None else "incomplete")
        if reason is None:
            response = self.snapshot("completed", completed_at=completed_at)
            out.append(self._event("response.completed", response=response))
        else:
            response = self.snapshot("incomplete", incomplete=reason)
            out.append(self._event("response.incomplete", response=response))
        self.ended = True
        return out

    def fail(self, err: TranslatorError) -> list[dict[str, Any]]:
        """The answer broke off: `response.failed` with the error (OpenAI's `ResponseError`)."""
        if self._open is not None:
            self._open["status"] = "incomplete"
            self._open = None
        # OpenAI's error codes for a failed response: only rate limits are told apart.
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        response = self.snapshot("failed", error={"code": code, "message": err.message})
        self.ended = True
        return [self._event("response.failed", response=response)]

    def snapshot(
        self,
        status: str,
        *,
        completed_at: int | None = None,
        incomplete: str | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The Response object as it stands."""
        response = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": completed_at,
            "error": error,
            "incomplete_details": None if incomplete is None else {"reason": incomplete},
            **copy.deepcopy(self._echo),
            "output": copy.deepcopy(self._output) if status != "in_progress" else [],
        }
        if self._usage is not None and status != "in_progress":
            response["usage"] = self._usage_object(self._usage)
        return response

    # -- internals ---------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return event

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{self.response_id.removeprefix('resp_')}_{len(self._output)}"

    def _delta(self, delta: Mapping[str, Any], out: list[dict[str, Any]]) -> None:
        if delta.get("reasoning_content"):
            item = self._ensure("reasoning", out)
            self._reasoning.append(delta["reasoning_content"])
            item["content"][0]["text"] += delta["reasoning_content"]
            out.append(
                self._part_event(
                    "response.reasoning_text.delta", item, delta=delta["reasoning_content"]
                )
            )
        if delta.get("content"):
            item = self._ensure("message", out)
            item["content"][0]["text"] += delta["content"]
            self._content_len += len(delta["content"])
            out.append(
                self._part_event(
                    "response.output_text.delta", item, delta=delta["content"], logprobs=[]
                )
            )
        for call in delta.get("tool_calls") or ():
            self._tool_call(call, out)
        for annotation in delta.get("annotations") or ():
            self._annotate(annotation, out)

    def _ensure(self, kind: str, out: list[dict[str, Any]]) -> dict[str, Any]:
        if self._open is not None and self._open["type"] == kind:
            return self._open
        out.extend(self._close_item("completed"))
        item: dict[str, Any]
        if kind == "message":
            self._text_start = self._content_len
            item = {
                "id": self._item_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            part: dict[str, Any] = {
                "type": "output_text",
                "text": "",
                "annotations": [],
                "logprobs": [],
            }
        else:
            item = {
                "id": self._item_id("rs"),
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
            part = {"type": "reasoning_text", "text": ""}
        self._open_item(item, out)
        out.append(self._part_event("response.content_part.added", item, part=copy.deepcopy(part)))
        item["content"].append(part)
        return item

    def _open_item(self, item: dict[str, Any], out: list[dict[str, Any]]) -> None:
        out.append(
            self._event(
                "response.output_item.added",
                output_index=len(self._output),
                item=copy.deepcopy(item),
            )
        )
        self._output.append(item)
        self._open = item

    def _tool_call(self, call: Mapping[str, Any], out: list[dict[str, Any]]) -> None:
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(index)
        if item is None or (call.get("id") and call["id"] != item["call_id"]):
            out.extend(self._close_item("completed"))
            item = {
                "id": self._item_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": call.get("id") or f"call_{index}",
                "name": function.get("name") or "",
                "arguments": "",
            }
            self._calls[index] = item
            self._open_item(item, out)
        arguments = function.get("arguments") or ""
        if arguments and item is not self._open:
            # OpenAI streams one call after the other; the pipeline does too. A piece for a call
            # that was already closed cannot be told to the client any more.
            raise RemoteProtocolError(
                "tool call arguments arrived after the call ended", code="upstream_protocol_error"
            )
        if arguments:
            item["arguments"] += arguments
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self._output.index(item),
                    delta=arguments,
                )
            )

    def _annotate(self, annotation: Mapping[str, Any], out: list[dict[str, Any]]) -> None:
        item = self._open
        if item is None or item["type"] != "message":
            return  # nothing open to point into: a citation needs the text it cites
        cite = annotation["url_citation"]
        part = item["content"][0]
        start = max(0, cite["start_index"] - self._text_start)
        end = max(start, cite["end_index"] - self._text_start)
        ours = {
            "type": "url_citation",
            "url": cite["url"],
            "title": cite["title"],
            "start_index": start,
            "end_index": end,
        }
        out.append(
            self._part_event(
                "response.output_text.annotation.added",
                item,
                annotation_index=len(part["annotations"]),
                annotation=dict(ours),
            )
        )
        part["annotations"].append(ours)

    def _part_event(self, kind: str, item: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return self._event(
            kind,
            item_id=item["id"],
            output_index=self._output.index(item),
            content_index=0,
            **fields,
        )

    def _close_item(self, status: str) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        self._open = None
        index = self._output.index(item)
        out: list[dict[str, Any]] = []
        if item["type"] == "function_call":
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    name=item["name"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
        else:
            part = item["content"][0]
            if item["type"] == "message":
                out.append(
                    self._part_event(
                        "response.output_text.done", item, text=part["text"], logprobs=[]
                    )
                )
            else:
                out.append(
                    self._part_event("response.reasoning_text.done", item, text=part["text"])
                )
            out.append(
                self._part_event("response.content_part.done", item, part=copy.deepcopy(part))
            )
        item["status"] = status
        out.append(
            self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item))
        )
        return out

    def _usage_object(self, usage: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            # The chat usage counts reasoning within completion tokens; its share is estimated
            # the same way (see _usage.py).
            "output_tokens_details": {
                "reasoning_tokens": estimate_tokens("".join(self._reasoning))
            },
            "total_tokens": usage["total_tokens"],
        }


_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def fold_response(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The Response object a non-streaming client gets, rebuilt from the stream's events.

    Items come from their `output_item.added` event, texts and arguments from the deltas, the
    final item state (status, annotations) from `output_item.done`, and everything else from
    the terminal event (`response.completed`, `.incomplete` or `.failed`).

    Raises:
        ValueError: the events end before a terminal event.
    """
    items: dict[int, dict[str, Any]] = {}
    terminal: Mapping[str, Any] | None = None
    for event in events:
        kind = event["type"]
        if kind == "response.output_item.added":
            items[event["output_index"]] = copy.deepcopy(dict(event["item"]))
        elif kind == "response.content_part.added":
            items[event["output_index"]]["content"].append(copy.deepcopy(dict(event["part"])))
        elif kind in ("response.output_text.delta", "response.reasoning_text.delta"):
            items[event["output_index"]]["content"][event["content_index"]]["text"] += event[
                "delta"
            ]
        elif kind == "response.function_call_arguments.delta":
            items[event["output_index"]]["arguments"] += event["delta"]
        elif kind == "response.output_text.annotation.added":
            part = items[event["output_index"]]["content"][event["content_index"]]
            part["annotations"].append(copy.deepcopy(dict(event["annotation"])))
        elif kind == "response.output_item.done":
            item = items[event["output_index"]]
            item["status"] = event["item"]["status"]
        elif kind in _TERMINAL:
            terminal = event["response"]
    if terminal is None:
        raise ValueError("the events end before response.completed / .incomplete / .failed")
    response = copy.deepcopy(dict(terminal))
    output = [items[i] for i in sorted(items)]
    if response["status"] == "failed":
        for item in output:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
    response["output"] = output
    return response
