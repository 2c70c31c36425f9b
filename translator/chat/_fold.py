"""fold_completion: the stream's chunks → one `chat.completion` for a non-streaming client.

Folding the very chunks a streaming client would get means the two forms cannot disagree:
the message content is the concatenation of every `delta.content`, the reasoning of every
`delta.reasoning_content`, the annotations are those of the finish chunk, `tool_calls` collect
their `tool_calls` deltas by index (id, type and name from the first, the arguments joined), and
the usage is the usage chunk's (or, without one, the same estimate `estimate_tokens` gives).
With only calls and no text, `content` is null, as OpenAI sends it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from translator._usage import usage_for

__all__ = ["fold_completion"]


def fold_completion(chunks: Iterable[Mapping[str, Any]], *, prompt_text: str) -> dict[str, Any]:
    """Build the `chat.completion` object from `ResponseTranslator` chunks.

    Raises:
        ValueError: no chunk, or no chunk with a finish_reason (the answer was not closed).
    """
    first: Mapping[str, Any] | None = None
    content: list[str] = []
    reasoning: list[str] = []
    annotations: list[Any] = []
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        first = first or chunk
        if chunk.get("usage"):
            usage = dict(chunk["usage"])
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            annotations.extend(delta.get("annotations") or ())
            for piece in delta.get("tool_calls") or ():
                call = calls.setdefault(
                    piece["index"], {"id": "", "type": "function", "function": {"name": ""}}
                )
                call["id"] = piece.get("id") or call["id"]
                function = piece.get("function") or {}
                call["function"]["name"] = function.get("name") or call["function"]["name"]
                call.setdefault("arguments", []).append(function.get("arguments") or "")
            finish_reason = choice.get("finish_reason") or finish_reason
    if first is None:
        raise ValueError("fold_completion() needs at least one chunk")
    if finish_reason is None:
        raise ValueError("the chunks end before a finish_reason: close() the translator first")
    text = "".join(content)
    thought = "".join(reasoning)
    tool_calls = [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": "".join(call["arguments"])},
        }
        for _, call in sorted(calls.items())
    ]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
        "refusal": None,
        "annotations": annotations,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thought:
        message["reasoning_content"] = thought
    completion: dict[str, Any] = {
        "id": first["id"],
        "object": "chat.completion",
        "created": first["created"],
        "model": first["model"],
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage
        or usage_for(
            prompt_text=prompt_text,
            completion_text=text
            + thought
            + "".join(c["function"]["arguments"] for c in tool_calls),
        ),
    }
    if "system_fingerprint" in first:  # a string or absent (the spec does not allow null)
        completion["system_fingerprint"] = first["system_fingerprint"]
    return completion
