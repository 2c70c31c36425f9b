"""An Anthropic Messages request → the OpenAI chat completion request the one pipeline runs.

The Messages face does not plan a chat itself: it checks Anthropic's own fields (so a 400 names
the field the way Anthropic does, `messages.1.content.0.source.media_type`), then writes the
equivalent OpenAI `CreateChatCompletionRequest`, which `plan_chat` and the rest of the chat
pipeline run unchanged. The mapping:

    system (string or text blocks)       → a leading `system` message (block texts joined "\\n")
    messages[] with role system          → a `system` message; right after a user turn it goes
                                           just before that turn (see `_messages`)
    messages[].content text block        → a `text` part
    image, source base64 / url           → an `image_url` part (a `data:` URL, or the URL)
    document, source base64 (PDF)        → a `file` part with `file_data` (a `data:` URL)
    document, source url                 → a `file` part with `file_url`
    document, source text (text/plain)   → a `file` part holding the text as a .txt file
    document, source content (blocks)    → its text / image blocks, inline
    assistant tool_use blocks            → the assistant message's `tool_calls` (id kept; the
                                           input as JSON `arguments`, written as the pipeline
                                           writes them)
    user tool_result blocks              → `tool` messages (`tool_call_id` = tool_use_id), in
                                           order; `is_error: true` is kept as a first line
                                           `[tool error]`; images in a result follow as a user
                                           message
    assistant thinking / redacted_thinking  dropped: Kimi's reasoning is not replayed
    tools (client tools)                 → function tools (`input_schema` → `parameters`)
    tool_choice auto / any / tool / none → "auto" / "required" / the named function / "none";
                                           `disable_parallel_tool_use` → parallel_tool_calls false
    stop_sequences                       → stop
    max_tokens                           → max_completion_tokens
    thinking enabled / adaptive /        → thinking on: reasoning_effort "high", and a Claude
      between_tools                        model name maps to `CLAUDE_THINKING_MODEL`
    thinking disabled                    → reasoning_effort "none"
    model claude-*                       → `CLAUDE_MODEL` (thinking off) / `CLAUDE_THINKING_MODEL`
                                           (thinking on); any other name is passed on as given
                                           (Kimi names keep working). Answers echo the name the
                                           client sent.

The OpenAI request always asks for a stream with usage (`stream: true`,
`stream_options.include_usage`): the Messages encoder reads chunks either way and folds them for
a non-streaming client.

Accepted with their types checked, without effect (Kimi's web chat has no such knob):
temperature, top_p, top_k, metadata. Accepted and ignored without checks, because Claude Code
and the SDKs send them and they change nothing here: output_config, context_management,
service_tier, container, mcp_servers, speed, inference_geo, diagnostics, betas, `cache_control`
and `citations` on any block, a document's `title` / `context` / `citations`, a tool's
`cache_control` / `strict` / `input_examples` / `eager_input_streaming` / `defer_loading` /
`allowed_callers`, and any other unknown top-level field.

Refused (400, `invalid_request_error`): Anthropic's server tools (a tool with a `type` other
than "custom", e.g. web_search_20250305: Kimi runs none of them), `file` sources (Anthropic's
Files API is not ours to read), block types we cannot pass on (server_tool_use, search_result,
container_upload, ...), and more than `MAX_STOP_SEQUENCES` stop sequences.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from translator._dataurl import parse_data_url
from translator._errors import LocalProtocolError
from translator.tools._json_schema import check_schema
from translator.tools._prompt import tool_name_problem

__all__ = [
    "CLAUDE_MODEL",
    "CLAUDE_THINKING_MODEL",
    "MAX_STOP_SEQUENCES",
    "MessagesCall",
    "translate_messages",
]

#: the Kimi model any `claude-*` name runs on (the proxy's default model)
CLAUDE_MODEL: Final = "kimi"
#: ... and when the request turns thinking on. It reads right in both dialects: on the legacy
#: kimi.moonshot.cn the k1 reasoning agent (`k1`), on www.kimi.com the default scenario with
#: thinking on (`thinking`; no catalog model is named, so nothing Kimi lacks is asked for)
CLAUDE_THINKING_MODEL: Final = "kimi-k1-thinking"
#: the chat pipeline enforces at most this many stop strings (OpenAI's limit)
MAX_STOP_SEQUENCES: Final = 4

_IMAGE_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")
_THINKING_ON: Final = ("enabled", "adaptive", "between_tools")
_TOOL_ERROR: Final = "[tool error]"
#: JSON types by the Python type json.loads gives (bool before number: a bool is an int)
_KINDS: Final[tuple[tuple[str, Callable[[Any], bool]], ...]] = (
    ("null", lambda v: v is None),
    ("boolean", lambda v: isinstance(v, bool)),
    ("number", lambda v: isinstance(v, int | float)),
    ("string", lambda v: isinstance(v, str)),
    ("array", lambda v: isinstance(v, list)),
    ("object", lambda v: isinstance(v, dict)),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesCall:
    """A checked Messages request, ready for the chat pipeline."""

    #: the OpenAI chat completion request to run
    chat: dict[str, Any]
    #: the model name the client sent, echoed in every answer
    model: str
    stream: bool
    thinking: bool
    stop_sequences: tuple[str, ...]


# --- checks, with Anthropic's dotted paths ------------------------------------------------------


def _fail(path: str, message: str, code: str = "invalid_value") -> LocalProtocolError:
    return LocalProtocolError(f"{path}: {message}", param=path, code=code)


def _kind(value: Any) -> str:
    for name, test in _KINDS:
        if test(value):
            return name
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )


def _want(value: Any, path: str, kind: str) -> None:
    ok = _is_int(value) if kind == "integer" else _kind(value) == kind
    if not ok:
        raise _fail(path, f"expected {kind}, got {_kind(value)}", "invalid_type")


def _field(obj: Mapping[str, Any], key: str, path: str, kind: str) -> Any:
    """`obj[key]`, which must be there and be of JSON type `kind`."""
    if key not in obj:
        raise _fail(f"{path}.{key}", "Field required", "missing_required_field")
    _want(obj[key], f"{path}.{key}", kind)
    return obj[key]


def _one_of(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    if not (isinstance(value, str) and value in allowed):
        raise _fail(path, f"must be one of {list(allowed)}, got {value!r}")
    return value


def _number(request: Mapping[str, Any], key: str, low: float, high: float | None) -> None:
    if key in request:
        value = request[key]
        _want(value, key, "number")
        if value < low or (high is not None and value > high):
            raise _fail(key, f"must be between {low} and {high}, got {value!r}")


def _blocks(value: Any, path: str) -> list[Mapping[str, Any]]:
    """A content list whose items are objects with a string `type`."""
    _want(value, path, "array")
    for i, block in enumerate(value):
        _want(block, f"{path}.{i}", "object")
        _field(block, "type", f"{path}.{i}", "string")
    return list(value)


def _text_of(value: Any, path: str) -> str:
    """A string, or a list of text blocks joined with "\\n" (system, tool_result content)."""
    if isinstance(value, str):
        return value
    texts = []
    for i, block in enumerate(_blocks(value, path)):
        _one_of(block["type"], f"{path}.{i}.type", ("text",))
        texts.append(_field(block, "text", f"{path}.{i}", "string"))
    return "\n".join(texts)


# --- content blocks → OpenAI parts --------------------------------------------------------------


def _base64(source: Mapping[str, Any], path: str, media_type: str) -> str:
    data = _field(source, "data", path, "string")
    # Checked here so a bad payload is named in Anthropic's terms, not by the OpenAI path.
    try:
        parse_data_url(f"data:{media_type};base64,{data}", param=f"{path}.data")
    except LocalProtocolError as err:
        raise _fail(f"{path}.data", err.message.removeprefix("invalid data URL: ")) from None
    return f"data:{media_type};base64,{data}"


def _url(source: Mapping[str, Any], path: str) -> str:
    """A source's `url`, checked here so a refused one is named in Anthropic's terms (the chat
    pipeline would name the OpenAI part it became)."""
    url: str = _field(source, "url", path, "string")
    scheme = url.partition(":")[0].lower()
    if scheme == "data":
        try:
            parse_data_url(url, param=f"{path}.url")
        except LocalProtocolError as err:
            raise _fail(f"{path}.url", err.message.removeprefix("invalid data URL: ")) from None
    elif scheme not in ("http", "https"):
        raise _fail(f"{path}.url", f"only http(s) and data: URLs can be read, got {scheme!r}")
    return url


def _image(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    source = _field(block, "source", path, "object")
    path = f"{path}.source"
    kind = _one_of(source.get("type"), f"{path}.type", ("base64", "url", "file"))
    if kind == "base64":
        media = _one_of(source.get("media_type"), f"{path}.media_type", _IMAGE_TYPES)
        url = _base64(source, path, media)
    elif kind == "url":
        url = _url(source, path)
    else:
        raise _files_api(path)
    return {"type": "image_url", "image_url": {"url": url}}


def _files_api(path: str) -> LocalProtocolError:
    return _fail(
        f"{path}.type",
        "file sources are not supported: kimi-free-api cannot read Anthropic's Files API; "
        "send the content as base64 or a URL",
        "unsupported_value",
    )


def _document(block: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    source = _field(block, "source", path, "object")
    title = block.get("title")
    name = title if isinstance(title, str) and title else "document"
    path = f"{path}.source"
    kind = _one_of(source.get("type"), f"{path}.type", ("base64", "url", "text", "content", "file"))
    if kind == "base64":
        media = _one_of(source.get("media_type"), f"{path}.media_type", ("application/pdf",))
        data = _base64(source, path, media)
        return [{"type": "file", "file": {"file_data": data, "filename": f"{name}.pdf"}}]
    if kind == "url":
        return [{"type": "file", "file_url": {"url": _url(source, path)}}]
    if kind == "text":
        _one_of(source.get("media_type"), f"{path}.media_type", ("text/plain",))
        text = _field(source, "data", path, "string")
        encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
        data = f"data:text/plain;base64,{encoded}"
        return [{"type": "file", "file": {"file_data": data, "filename": f"{name}.txt"}}]
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        return [
            _inline_part(b, f"{path}.content.{i}")
            for i, b in enumerate(_blocks(content, f"{path}.content"))
        ]
    raise _files_api(path)


def _inline_part(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A text or image block (document content, tool_result content)."""
    kind = _one_of(block["type"], f"{path}.type", ("text", "image"))
    if kind == "text":
        return {"type": "text", "text": _field(block, "text", path, "string")}
    return _image(block, path)


def _tool_result(
    block: Mapping[str, Any], path: str, calls: set[str]
) -> tuple[dict[str, Any], list[Any]]:
    """The `tool` message for a tool_result, and the image parts it carried. `calls`: the ids
    of the tool_use blocks of the earlier assistant turns."""
    call_id = _field(block, "tool_use_id", path, "string")
    content = block.get("content", "")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    else:
        for i, item in enumerate(_blocks(content, f"{path}.content")):
            part = _inline_part(item, f"{path}.content.{i}")
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    if "is_error" in block:
        _want(block["is_error"], f"{path}.is_error", "boolean")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        # The model must see that the call failed; OpenAI tool messages have no error flag.
        text = f"{_TOOL_ERROR}\n{text}"
    if call_id not in calls:  # after the block's own checks, so those are reported first
        raise _fail(
            f"{path}.tool_use_id",
            f"{call_id!r} answers no tool_use block of an earlier assistant turn",
        )
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user(content: list[Mapping[str, Any]], path: str, calls: set[str]) -> list[dict[str, Any]]:
    """One Anthropic user turn → OpenAI messages: runs of tool_result blocks become `tool`
    messages (OpenAI wants them right after the assistant's calls), other blocks a user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []

    def flush() -> None:
        if parts:
            out.append({"role": "user", "content": list(parts)})
            parts.clear()

    for i, block in enumerate(content):
        here = f"{path}.{i}"
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": _field(block, "text", here, "string")})
        elif kind == "image":
            parts.append(_image(block, here))
        elif kind == "document":
            parts.extend(_document(block, here))
        elif kind == "tool_result":
            flush()
            message, images = _tool_result(block, here, calls)
            out.append(message)
            parts.extend(images)
        else:
            raise _unsupported_block(kind, f"{here}.type", "user")
    flush()
    return out


def _unsupported_block(kind: str, path: str, role: str) -> LocalProtocolError:
    return _fail(
        path,
        f"content blocks of type {kind!r} are not supported in {role} turns",
        "unsupported_value",
    )


def _assistant(content: list[Mapping[str, Any]], path: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        here = f"{path}.{i}"
        kind = block["type"]
        if kind == "text":
            texts.append(_field(block, "text", here, "string"))
        elif kind == "tool_use":
            call_id = _field(block, "id", here, "string")
            name = _field(block, "name", here, "string")
            arguments = _field(block, "input", here, "object")
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": name,
                        # Written as the pipeline writes a call's arguments, so a resent
                        # call reads exactly like the answer it came from, and the Kimi
                        # conversation continues (the continuation key compares the text).
                        "arguments": json.dumps(arguments, ensure_ascii=False),
                    },
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):
            raise _unsupported_block(kind, f"{here}.type", "assistant")
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(value: Any) -> list[dict[str, Any]]:
    _want(value, "messages", "array")
    if not value:
        raise _fail("messages", "at least one message is required")
    out: list[dict[str, Any]] = []
    calls: set[str] = set()  # the tool_use ids seen so far
    for i, message in enumerate(value):
        path = f"messages.{i}"
        _want(message, path, "object")
        role = _one_of(message.get("role"), f"{path}.role", ("user", "assistant", "system"))
        if "content" not in message:
            raise _fail(f"{path}.content", "Field required", "missing_required_field")
        content = message["content"]
        if role == "system":
            system = {"role": "system", "content": _text_of(content, f"{path}.content")}
            if out and out[-1]["role"] == "user":
                # Claude Code adds context as a system turn right after the user's: put before
                # that turn, the user's words stay the newest thing in the flattened prompt,
                # which asks Kimi to attend to the last message. The same rule on every
                # resend keeps the history's prefix stable, so conversations still continue.
                out.insert(len(out) - 1, system)
            else:
                out.append(system)
        elif isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "user":
            out.extend(_user(_blocks(content, f"{path}.content"), f"{path}.content", calls))
        else:
            out.append(_assistant(_blocks(content, f"{path}.content"), f"{path}.content"))
            calls.update(call["id"] for call in out[-1].get("tool_calls", ()))
    return out


# --- tools --------------------------------------------------------------------------------------


def _tools(value: Any) -> list[dict[str, Any]]:
    _want(value, "tools", "array")
    out = []
    seen: set[str] = set()
    for i, tool in enumerate(value):
        path = f"tools.{i}"
        _want(tool, path, "object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _fail(
                f"{path}.type",
                f"Anthropic's server tool {kind!r} is not available through Kimi's web chat; "
                "only client tools (with input_schema) are",
                "unsupported_value",
            )
        function: dict[str, Any] = {
            "name": _field(tool, "name", path, "string"),
            "parameters": _field(tool, "input_schema", path, "object"),
        }
        # Checked here, not left to the chat pipeline, so the error names Anthropic's field.
        problem = tool_name_problem(function["name"])
        if problem is not None:
            raise _fail(f"{path}.name", problem)
        if function["name"] in seen:
            raise _fail(f"{path}.name", f"the tool name {function['name']!r} is declared twice")
        seen.add(function["name"])
        check_schema(function["parameters"], f"{path}.input_schema")
        if "description" in tool:
            function["description"] = _field(tool, "description", path, "string")
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(value: Any, tools: list[dict[str, Any]], chat: dict[str, Any]) -> None:
    _want(value, "tool_choice", "object")
    kind = _one_of(value.get("type"), "tool_choice.type", ("auto", "any", "tool", "none"))
    if "disable_parallel_tool_use" in value:
        _want(
            value["disable_parallel_tool_use"], "tool_choice.disable_parallel_tool_use", "boolean"
        )
    if kind == "tool":
        name = _field(value, "name", "tool_choice", "string")
        if tools and name not in {tool["function"]["name"] for tool in tools}:
            raise _fail("tool_choice.name", f"{name!r} is not one of the declared tools")
        choice: Any = {"type": "function", "function": {"name": name}}
    else:
        choice = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if not tools:
        if kind in ("any", "tool"):
            raise _fail("tool_choice.type", f"{kind!r} needs `tools`", "invalid_value")
        return
    chat["tool_choice"] = choice
    if value.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


# --- the request --------------------------------------------------------------------------------


def _thinking(value: Any) -> bool:
    _want(value, "thinking", "object")
    kind = _one_of(value.get("type"), "thinking.type", ("disabled", *_THINKING_ON))
    if kind == "enabled":
        budget = _field(value, "budget_tokens", "thinking", "integer")
        if budget < 1024:
            raise _fail("thinking.budget_tokens", f"must be at least 1024, got {budget!r}")
    return kind in _THINKING_ON


def _stop_sequences(value: Any) -> tuple[str, ...]:
    _want(value, "stop_sequences", "array")
    for i, item in enumerate(value):
        _want(item, f"stop_sequences.{i}", "string")
    if len(value) > MAX_STOP_SEQUENCES:
        raise _fail(
            "stop_sequences",
            f"at most {MAX_STOP_SEQUENCES} stop sequences are supported, got {len(value)}",
            "unsupported_value",
        )
    return tuple(value)


def translate_messages(request: Any, *, count_only: bool = False) -> MessagesCall:
    """Check an Anthropic Messages request (parsed JSON) and write its OpenAI chat request.

    `count_only`: the body of `POST /v1/messages/count_tokens` (no `max_tokens`, no `stream`).

    Raises:
        LocalProtocolError: the first problem found, `param` in Anthropic's dotted form
            (`messages.0.content.2.source.data`).
    """
    if not isinstance(request, dict):
        raise LocalProtocolError(
            f"the request body must be a JSON object, got {_kind(request)}", code="invalid_type"
        )
    # Null means absent, as for the OpenAI faces: clients send `"system": null` and the like.
    request = {key: value for key, value in request.items() if value is not None}
    if "model" not in request:
        raise _fail("model", "Field required", "missing_required_field")
    model = request["model"]
    _want(model, "model", "string")
    if not model:
        raise _fail("model", "must not be empty")
    max_tokens: int | None = None
    if not count_only:
        if "max_tokens" not in request:
            raise _fail("max_tokens", "Field required", "missing_required_field")
        _want(request["max_tokens"], "max_tokens", "integer")
        max_tokens = int(request["max_tokens"])
        if max_tokens < 1:
            raise _fail("max_tokens", f"must be at least 1, got {max_tokens}")
    if "messages" not in request:
        raise _fail("messages", "Field required", "missing_required_field")
    messages = _messages(request["messages"])
    if "system" in request:
        system = _text_of(request["system"], "system")
        if system:
            messages.insert(0, {"role": "system", "content": system})
    stream = False
    if not count_only and "stream" in request:
        _want(request["stream"], "stream", "boolean")
        stream = request["stream"]
    _number(request, "temperature", 0, 1)
    _number(request, "top_p", 0, 1)
    if "top_k" in request:
        _want(request["top_k"], "top_k", "integer")
    if "metadata" in request:
        _want(request["metadata"], "metadata", "object")
    thinking = _thinking(request["thinking"]) if "thinking" in request else None
    claude = model.lower().startswith("claude")
    chat: dict[str, Any] = {
        "model": (CLAUDE_THINKING_MODEL if thinking else CLAUDE_MODEL) if claude else model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if thinking is not None:
        chat["reasoning_effort"] = "high" if thinking else "none"
    if max_tokens is not None:
        chat["max_completion_tokens"] = max_tokens
    stop = _stop_sequences(request["stop_sequences"]) if "stop_sequences" in request else ()
    if stop:
        chat["stop"] = list(stop)
    tools = _tools(request["tools"]) if "tools" in request else []
    if tools:
        chat["tools"] = tools
    if "tool_choice" in request:
        _tool_choice(request["tool_choice"], tools, chat)
    return MessagesCall(
        chat=chat, model=model, stream=stream, thinking=bool(thinking), stop_sequences=stop
    )
