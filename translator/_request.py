"""An OpenAI chat completion request → a `ChatPlan`: everything decided before any I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import LocalProtocolError
from ._messages import flatten_messages, normalise_messages, wrap_urls
from ._models import resolve_model
from ._plan import ChatPlan
from ._validate import check_conversation_id, validate_request

__all__ = ["plan_chat"]


def plan_chat(request: Mapping[str, Any]) -> ChatPlan:
    """Validate `request` (a parsed OpenAI `CreateChatCompletionRequest`) and plan the chat.

    The prompt is the flattened history (`flatten_messages`) and the files are those of every
    user message. With `conversation_id` (ours: continue a Kimi conversation the client got an id
    of earlier) Kimi already holds the history, so only the newest user message is sent: its text
    with URLs wrapped, and its files only. An empty `conversation_id` counts as absent.

    Raises:
        LocalProtocolError: the request is invalid or asks for what Kimi cannot do; `param`
            names the field.
    """
    validate_request(request)
    flags = resolve_model(
        request["model"],
        use_search=request.get("use_search") is True,
        reasoning_effort=request.get("reasoning_effort"),
    )
    messages = normalise_messages(request["messages"])
    conversation_id = request.get("conversation_id") or None
    if conversation_id is None:
        prompt = flatten_messages(messages)
        files = tuple(f for m in messages if m.role == "user" for f in m.files)
    else:
        check_conversation_id(conversation_id, "conversation_id")
        users = [m for m in messages if m.role == "user"]
        if not users:
            raise LocalProtocolError(
                "with conversation_id, messages must contain the new user message",
                param="messages",
                code="missing_required_field",
            )
        prompt, files = wrap_urls(users[-1].text), users[-1].files
    stream = request.get("stream") is True
    stream_options = request.get("stream_options") or {}
    return ChatPlan(
        model=request["model"],
        flags=flags,
        prompt=prompt,
        files=files,
        messages=messages,
        stream=stream,
        # OpenAI sends the usage chunk only on streams that asked for it.
        include_usage=stream and stream_options.get("include_usage") is True,
        conversation_id=conversation_id,
    )
