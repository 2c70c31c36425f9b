"""An OpenAI Responses API request (`POST /v1/responses`) → the chat completion request the one
pipeline serves.

The Responses API is a second face of the same chat: this module only maps its request onto a
chat completion request dict (which `plan_chat` then validates and plans like any other), so
files, multi-turn, reasoning, tools and structured output work the same way for both faces.
It validates the Responses fields first, so a bad request is answered in Responses terms
(`input[2].content[0].image_url`, not `messages[...]`); errors the chat side raises later (a bad
data URL, a bad tool schema) are renamed into Responses terms with `ResponsesPlan.rename`.

The mapping (OpenAI API reference, "Create a model response"):

    instructions                      a system message first
    input: "text"                     one user message
    input: [items]
      message (role user/system/developer/assistant; `type` may be omitted)
        content "text" or parts:      input_text / output_text → text, refusal → refusal,
                                      input_image {image_url} → image_url {url, detail},
                                      input_file {file_data, filename} → file {file_data, filename},
                                      input_file {file_url} → the seed's file {file_url: {url}}
      function_call {call_id, name, arguments}   → an assistant message's tool_calls (consecutive
                                                   calls, and a call right after an assistant
                                                   message, share one assistant message)
      function_call_output {call_id, output}     → a tool message (text output only)
      custom_tool_call / _output                 → the same, with `input` as the arguments
      reasoning, item_reference, web_search_call and the other items a client replays from an
                                      earlier output: skipped (Kimi holds its own thinking; the
                                      reasoning text is ours and has no effect as input)
    tools: function tools             → chat function tools; other tool types (web_search, MCP,
                                      custom, namespaces ...) are not Kimi's and are ignored
    tool_choice                       none/auto/required, {type: function, name} → the chat forms
    text.format                       text / json_object / json_schema {name, schema, strict}
                                      → response_format
    reasoning.effort                  → reasoning_effort (thinking on/off, as for chat)
    max_output_tokens                 → max_completion_tokens
    temperature, top_p, user, parallel_tool_calls, use_search (ours)  → passed through

Refused (code "unsupported_value"), rather than silently answering something else: `background`
true, `conversation` (OpenAI's Conversations API), `prompt` templates, OpenAI `file_id`s, audio
and image tool outputs. `previous_response_id` is resolved by the addon (it owns the store): it
passes the Kimi conversation that answered it, and only the new input is posted there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from translator._errors import TranslatorError
from translator.chat._validate import (
    Check,
    _array,
    _by_type,
    _child,
    _enum,
    _expect,
    _fail,
    _object,
    _ranged,
    _tagged,
    _typed,
    _values,
    check_conversation_id,
)

__all__ = ["ResponsesPlan", "plan_responses"]

_STRING = _typed("string")
_BOOLEAN = _typed("boolean")
_OBJECT = _typed("object")
_ANY: Check = lambda value, path: None  # noqa: E731 - a checker that accepts anything

# --- validation: the Responses request, in its own terms ---------------------------------------


def _check_image(part: Any, path: str) -> None:
    _object(
        {},
        {
            "image_url": _STRING,
            "file_id": _STRING,
            "detail": _enum("auto", "low", "high", "original"),
        },
    )(part, path)
    if part.get("image_url") is None:
        _no_file_id(part, path, "image_url")
        raise _fail(_child(path, "image_url"), "is required", "missing_required_field")


def _check_file(part: Any, path: str) -> None:
    _object(
        {},
        {
            "file_data": _STRING,
            "file_url": _STRING,
            "filename": _STRING,
            "file_id": _STRING,
        },
    )(part, path)
    if "file_data" not in part and "file_url" not in part:
        _no_file_id(part, path, "file_data")
        raise _fail(_child(path, "file_data"), "is required", "missing_required_field")


def _no_file_id(part: Mapping[str, Any], path: str, instead: str) -> None:
    if part.get("file_id") is not None:
        raise _fail(
            _child(path, "file_id"),
            "OpenAI file ids cannot be used here: kimi-free-api cannot read OpenAI's file "
            f"store; send the content as {instead} (a data: URL or an http(s) URL) instead",
            "unsupported_value",
        )


_TEXT = _object({"text": _STRING})
_INPUT_PART = _tagged(
    "type",
    {
        "input_text": _TEXT,
        "output_text": _TEXT,
        "refusal": _object({"refusal": _STRING}),
        "input_image": _check_image,
        "input_file": _check_file,
        "input_audio": lambda value, path: _unsupported(
            path, "audio input is not supported: Kimi's web chat takes no audio"
        ),
    },
)
_CONTENT = _by_type(string=_STRING, array=_array(_INPUT_PART))
_MESSAGE = _object(
    {"role": _enum("user", "assistant", "system", "developer"), "content": _CONTENT},
    {"type": _enum("message")},
)
_TOOL_OUTPUT = _by_type(
    string=_STRING,
    array=_array(
        _tagged(
            "type",
            {
                "input_text": _TEXT,
                "input_image": lambda value, path: _unsupported(
                    path, "images in tool output are not supported: send them as a user message"
                ),
                "input_file": lambda value, path: _unsupported(
                    path, "files in tool output are not supported: send them as a user message"
                ),
            },
        )
    ),
)

#: item types a client replays from an earlier response's output, which carry nothing Kimi can
#: use as input (see the module docstring)
_SKIPPED: Final = frozenset(
    {
        "reasoning",
        "item_reference",
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "local_shell_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "compaction",
    }
)

_ITEM_BRANCHES: Final[dict[str, Check]] = {
    "message": _MESSAGE,
    "function_call": _object({"call_id": _STRING, "name": _STRING, "arguments": _STRING}),
    "function_call_output": _object({"call_id": _STRING, "output": _TOOL_OUTPUT}),
    "custom_tool_call": _object({"call_id": _STRING, "name": _STRING, "input": _STRING}),
    "custom_tool_call_output": _object({"call_id": _STRING, "output": _TOOL_OUTPUT}),
    **{kind: _ANY for kind in _SKIPPED},
}
_TAGGED_ITEM = _tagged("type", _ITEM_BRANCHES)


def _check_item(item: Any, path: str) -> None:
    # EasyInputMessage: a message may leave out `type`.
    if isinstance(item, dict) and "type" not in item and "role" in item:
        _MESSAGE(item, path)
        return
    _TAGGED_ITEM(item, path)


def _unsupported(path: str, message: str) -> None:
    raise _fail(path, message, "unsupported_value")


def _refuse(message: str) -> Check:
    def check(value: Any, path: str) -> None:
        if value not in (None, False):
            _unsupported(path, message)

    return check


_FUNCTION_TOOL = _object(
    {"name": _STRING},
    {
        "description": _STRING,
        "parameters": _OBJECT,
        "strict": _BOOLEAN,
    },
)


def _check_tool(tool: Any, path: str) -> None:
    _expect(tool, path, "object")
    if "type" not in tool:
        raise _fail(_child(path, "type"), "is required", "missing_required_field")
    _expect(tool["type"], _child(path, "type"), "string")
    if tool["type"] == "function":
        _FUNCTION_TOOL(tool, path)


def _check_tool_choice(value: Any, path: str) -> None:
    if isinstance(value, str):
        _enum("none", "auto", "required")(value, path)
        return
    _expect(value, path, "object")
    if value.get("type") != "function":
        _unsupported(
            _child(path, "type"),
            "only function tools can be chosen: kimi-free-api has no hosted tools",
        )
    _object({"name": _STRING})(value, path)


_FORMAT = _tagged(
    "type",
    {
        "text": _ANY,
        "json_object": _ANY,
        "json_schema": _object(
            {"name": _STRING, "schema": _OBJECT},
            {"description": _STRING, "strict": _BOOLEAN},
        ),
    },
)

# required and not nullable: null is refused as a value, not skipped as an absent option
_INPUT: Final[Check] = _by_type(string=_STRING, array=_array(_check_item))

_FIELDS: Final[Mapping[str, Check]] = {
    "instructions": _STRING,
    "stream": _BOOLEAN,
    "store": _BOOLEAN,
    "previous_response_id": _STRING,
    "tools": _array(_check_tool),
    "tool_choice": _check_tool_choice,
    "parallel_tool_calls": _BOOLEAN,
    "text": _object({}, {"format": _FORMAT, "verbosity": _ANY}),
    "reasoning": _object(
        {},
        {
            "effort": _enum("none", "minimal", "low", "medium", "high", "xhigh", "max"),
            "summary": _ANY,
        },
    ),
    "max_output_tokens": _ranged("integer", 1),
    "temperature": _ranged("number", 0, 2),
    "top_p": _ranged("number", 0, 1),
    "user": _STRING,
    "metadata": _values(_STRING),
    "include": _array(_STRING),
    "use_search": _BOOLEAN,
    "background": _refuse("background responses are not supported: answer in the foreground"),
    "conversation": _refuse(
        "OpenAI conversations are not supported: use previous_response_id to continue"
    ),
    "prompt": _refuse("prompt templates are not supported: send the text as input"),
}


def _check_model(value: Any, path: str) -> None:
    _expect(value, path, "string")
    if not value:
        raise _fail(path, "must not be empty", "invalid_value")


_REQUEST = _object({"model": _check_model, "input": _INPUT}, _FIELDS)

# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponsesPlan:
    """A Responses request mapped onto the chat pipeline.

    `chat_request` is the chat completion request to serve (always streamed with usage, so the
    encoder gets every chunk and the token counts; the face decides the wire form). `stream`
    and `store` are the client's. `echo` holds the request fields a Response object repeats.
    `input_items` are the request's input as items (a string input becomes one user message),
    kept with a stored response.
    """

    chat_request: dict[str, Any]
    stream: bool
    store: bool
    echo: dict[str, Any]
    input_items: tuple[Any, ...]
    #: chat param prefix → the Responses param it came from, longest first
    renames: tuple[tuple[str, str], ...] = field(default=())

    def rename(self, err: TranslatorError) -> TranslatorError:
        """`err` with its `param` (and the message's leading param) in Responses terms.

        Errors about fields that exist in both faces under the same name come back unchanged.
        """
        param = err.param
        if param is None:
            return err
        for chat, ours in self.renames:
            if param == chat or param.startswith((chat + ".", chat + "[")):
                new = ours + param[len(chat) :]
                break
        else:
            return err
        message = err.message
        if message.startswith(param + ":"):
            message = new + message[len(param) :]
        renamed = type(err)(message, status=err.status, type=err.type, param=new, code=err.code)
        renamed.retry_after = err.retry_after
        return renamed


def plan_responses(
    request: Any,
    *,
    conversation_id: str | None = None,
    continues: str | None = None,
    history: Sequence[Mapping[str, Any]] = (),
) -> ResponsesPlan:
    """Validate a Responses API request (parsed JSON) and map it onto a chat request.

    Args:
        request: the client's `CreateResponse` body.
        conversation_id: when the request continues a stored response (`previous_response_id`,
            resolved by the caller): the Kimi conversation that answered it. Only this
            request's input is then posted, into that conversation.
        continues: the `previous_response_id` the caller resolved (echoed in the Response).
        history: items to put before this request's input (a stored conversation replayed
            into a new chat, when the client branches from an earlier response); they are
            ours, already checked, and an error in them names `previous_response_id`.

    Raises:
        LocalProtocolError: the request is invalid or asks for what Kimi cannot do; `param`
            names the field in Responses terms.
    """
    if not isinstance(request, dict):
        raise _fail("", "the request body must be a JSON object", "invalid_type")
    _REQUEST(request, "")
    builder = _Builder()
    instructions = request.get("instructions")
    if instructions:
        builder.add({"role": "system", "content": instructions}, "instructions")
    for item in history:
        builder.item(item, "previous_response_id")
    raw_input = request["input"]
    if isinstance(raw_input, str):
        items: list[Any] = [{"type": "message", "role": "user", "content": raw_input}]
        builder.add({"role": "user", "content": raw_input}, "input")
    else:
        items = list(raw_input)
        for i, item in enumerate(items):
            builder.item(item, f"input[{i}]")
    if not builder.messages:
        raise _fail("input", "must contain at least one message", "invalid_value")
    chat: dict[str, Any] = {
        "model": request["model"],
        "messages": builder.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    builder.renames.append(("messages", "input"))
    if conversation_id is not None:
        chat["conversation_id"] = check_conversation_id(conversation_id, "previous_response_id")
    _map_options(request, chat, builder.renames)
    echo = _echo(request, continues)
    # Everything inside a replayed history item is named by the id it came from.
    renames = [
        (chat, "previous_response_id" if ours.startswith("previous_response_id") else ours)
        for chat, ours in builder.renames
    ]
    return ResponsesPlan(
        chat_request=chat,
        stream=request.get("stream") is True,
        store=request.get("store") is not False,
        echo=echo,
        input_items=(*history, *items),
        renames=tuple(sorted(renames, key=lambda r: -len(r[0]))),
    )


class _Builder:
    """Chat messages from input items, with the param renames of what it built."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.renames: list[tuple[str, str]] = []

    def add(self, message: dict[str, Any], path: str) -> None:
        self.renames.append((f"messages[{len(self.messages)}]", path))
        self.messages.append(message)

    def item(self, item: Mapping[str, Any], path: str) -> None:
        kind = item.get("type", "message")
        if kind == "message":
            self._message(item, path)
        elif kind in ("function_call", "custom_tool_call"):
            arguments = item["arguments"] if kind == "function_call" else item["input"]
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": arguments},
            }
            last = self.messages[-1] if self.messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                self.add({"role": "assistant", "content": None, "tool_calls": [call]}, path)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item["output"]
            if isinstance(output, list):
                output = "\n".join(part["text"] for part in output)
            self.renames.append((f"messages[{len(self.messages)}].tool_call_id", f"{path}.call_id"))
            self.add({"role": "tool", "tool_call_id": item["call_id"], "content": output}, path)
        # else: a replayed output item with nothing to post (_SKIPPED)

    def _message(self, item: Mapping[str, Any], path: str) -> None:
        role, content = item["role"], item["content"]
        index = len(self.messages)
        if isinstance(content, str):
            self.add({"role": role, "content": content}, path)
            return
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            parts.append(
                self._part(part, f"messages[{index}].content[{j}]", f"{path}.content[{j}]")
            )
        if role != "user":
            # System, developer and assistant messages take text only in chat; images and files
            # are user input.
            for j, part in enumerate(parts):
                if part["type"] not in ("text", "refusal") or (
                    part["type"] == "refusal" and role != "assistant"
                ):
                    _unsupported(f"{path}.content[{j}]", f"a {role} message can only hold text")
        self.add({"role": role, "content": parts}, path)

    def _part(self, part: Mapping[str, Any], chat: str, ours: str) -> dict[str, Any]:
        kind = part["type"]
        if kind in ("input_text", "output_text"):
            return {"type": "text", "text": part["text"]}
        if kind == "refusal":
            return {"type": "refusal", "refusal": part["refusal"]}
        if kind == "input_image":
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("auto", "low", "high"):
                image["detail"] = part["detail"]
            self.renames.append((f"{chat}.image_url.url", f"{ours}.image_url"))
            return {"type": "image_url", "image_url": image}
        # input_file: inline data wins over a URL, as with chat's file parts.
        if "file_data" in part:
            file = {"file_data": part["file_data"]}
            if "filename" in part:
                file["filename"] = part["filename"]
            self.renames.append((f"{chat}.file.file_data", f"{ours}.file_data"))
            return {"type": "file", "file": file}
        self.renames.append((f"{chat}.file_url.url", f"{ours}.file_url"))
        return {"type": "file", "file_url": {"url": part["file_url"]}}


def _map_options(
    request: Mapping[str, Any], chat: dict[str, Any], renames: list[tuple[str, str]]
) -> None:
    # Only function tools go to the chat side; their chat index differs when others are left out.
    functions = [
        (i, t) for i, t in enumerate(request.get("tools") or ()) if t["type"] == "function"
    ]
    for j, (i, _tool) in enumerate(functions):
        renames.append((f"tools[{j}].function", f"tools[{i}]"))
        renames.append((f"tools[{j}]", f"tools[{i}]"))
    if functions:
        chat["tools"] = [_chat_tool(t) for _i, t in functions]
    choice = request.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif choice is not None:
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        renames.append(("tool_choice.function", "tool_choice"))
    fmt = (request.get("text") or {}).get("format")
    if fmt is not None:
        if fmt["type"] == "json_schema":
            schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if k in fmt}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
            renames.append(("response_format.json_schema", "text.format"))
        else:
            chat["response_format"] = {"type": fmt["type"]}
        renames.append(("response_format", "text.format"))
    effort = (request.get("reasoning") or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
        renames.append(("reasoning_effort", "reasoning.effort"))
    if request.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = request["max_output_tokens"]
        renames.append(("max_completion_tokens", "max_output_tokens"))
    for name in ("temperature", "top_p", "user", "parallel_tool_calls", "use_search"):
        if request.get(name) is not None:
            chat[name] = request[name]


def _chat_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _echo_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A tool as the Response object repeats it: the spec requires a function tool's `strict`
    and `parameters` there (null when the request left them out)."""
    if tool["type"] != "function":
        return dict(tool)
    return {**tool, "strict": tool.get("strict"), "parameters": tool.get("parameters")}


def _echo(request: Mapping[str, Any], continues: str | None) -> dict[str, Any]:
    """The request fields a Response object repeats, with OpenAI's defaults."""
    reasoning = request.get("reasoning") or {}
    text = request.get("text") or {}
    echo: dict[str, Any] = {
        "model": request["model"],
        "instructions": request.get("instructions"),
        "tools": [_echo_tool(tool) for tool in request.get("tools") or ()],
        # null is absent: the Response object's tool_choice is never null
        "tool_choice": request.get("tool_choice") or "auto",
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "text": {"format": text.get("format") or {"type": "text"}},
        "reasoning": {
            "effort": reasoning.get("effort"),
            "summary": reasoning.get("summary"),
        },
        "max_output_tokens": request.get("max_output_tokens"),
        "previous_response_id": continues,
        "store": request.get("store") is not False,
        "temperature": request.get("temperature", 1.0),
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": dict(request.get("metadata") or {}),
    }
    if request.get("user") is not None:
        echo["user"] = request["user"]  # a string when present (the spec allows no null here)
    return echo
