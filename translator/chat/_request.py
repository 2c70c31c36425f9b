"""An OpenAI chat completion request → a `ChatPlan`: everything decided before any I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from translator._errors import LocalProtocolError
from translator._plan import ChatPlan, Message, OutputFormat, ToolSpec
from translator.tools._json_schema import check_schema
from translator.tools._prompt import compose_prompt, tool_name_problem

from ._messages import flatten_messages, normalise_messages, wrap_urls
from ._models import resolve_model
from ._validate import check_conversation_id, validate_request

__all__ = ["plan_chat"]


def plan_chat(request: Mapping[str, Any]) -> ChatPlan:
    """Validate `request` (a parsed OpenAI `CreateChatCompletionRequest`) and plan the chat.

    The prompt is the flattened history (`flatten_messages`) and the files are those of every
    user message. With `conversation_id` (ours: continue a Kimi conversation the client got an id
    of earlier) Kimi already holds the history, so only the newest user message is sent: its text
    with URLs wrapped, and its files only — or, when the messages after the last assistant
    message carry tool results, those results (with a user message among them), rendered as
    new turns. An empty `conversation_id` counts as absent.

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
        _check_tool_results(request["messages"])
        prompt = flatten_messages(messages)
        files = tuple(f for m in messages if m.role == "user" for f in m.files)
    else:
        check_conversation_id(conversation_id, "conversation_id")
        users = [m for m in messages if m.role == "user"]
        results = _tool_results_turn(messages)
        if results:
            # The client answers the calls Kimi made: post the results (and a user message
            # sent with them), rendered as the history path renders new turns.
            prompt = flatten_messages(results)
            files = tuple(f for m in results for f in m.files)
        elif not users:
            raise LocalProtocolError(
                "with conversation_id, messages must contain the new user message",
                param="messages",
                code="missing_required_field",
            )
        else:
            prompt, files = wrap_urls(users[-1].text), users[-1].files
    tools = _tools(request)
    tool_choice = _tool_choice(request, tools)
    parallel = request.get("parallel_tool_calls") is not False
    output = _output_format(request)
    prompt = compose_prompt(
        prompt, tools=tools, tool_choice=tool_choice, parallel=parallel, output=output
    )
    stream = request.get("stream") is True
    stream_options = request.get("stream_options") or {}
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
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
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        response_format=output,
        stop=_stop(request.get("stop")),
        max_tokens=None if limit is None else int(limit),
    )


def _check_tool_results(messages: list[Mapping[str, Any]]) -> None:
    """Refuse a `tool` message that answers no call of an earlier assistant message, as OpenAI
    does (the model would read a result of a call it never made). Not with `conversation_id`:
    there the calls may live only in Kimi's copy of the conversation."""
    calls: set[str] = set()
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            calls.update(call["id"] for call in message.get("tool_calls") or ())
        elif message["role"] == "tool" and message["tool_call_id"] not in calls:
            param = f"messages[{i}].tool_call_id"
            raise LocalProtocolError(
                # worded for every face: Responses and Messages rename the param only
                f"{param}: {message['tool_call_id']!r} answers no tool call made earlier in "
                "the conversation",
                param=param,
                code="invalid_value",
            )


def _tool_results_turn(messages: tuple[Message, ...]) -> list[Message]:
    """The user and tool-result messages after the last assistant message, when that turn
    carries tool results (else [])."""
    turn: list[Message] = []
    for message in reversed(messages):
        if message.role == "assistant":
            break
        if message.role in ("user", "tool", "function"):
            turn.insert(0, message)
    return turn if any(m.role in ("tool", "function") for m in turn) else []


def _tools(request: Mapping[str, Any]) -> tuple[ToolSpec, ...]:
    """`tools` (or the legacy `functions`) as ToolSpecs; each schema must be a valid one."""
    if request.get("tools"):
        entries = [(t["function"], f"tools[{i}].function") for i, t in enumerate(request["tools"])]
    else:
        entries = [(f, f"functions[{i}]") for i, f in enumerate(request.get("functions") or ())]
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for function, path in entries:
        name = function["name"]
        problem = tool_name_problem(name)
        if problem is not None:
            raise LocalProtocolError(
                f"{path}.name: {problem}", param=f"{path}.name", code="invalid_value"
            )
        if name in seen:
            raise LocalProtocolError(
                f"{path}.name: the tool name {name!r} is declared twice",
                param=f"{path}.name",
                code="invalid_value",
            )
        seen.add(name)
        parameters = function.get("parameters") or {}
        check_schema(parameters, f"{path}.parameters")
        specs.append(
            ToolSpec(
                name=name, description=function.get("description") or "", parameters=parameters
            )
        )
    return tuple(specs)


def _tool_choice(request: Mapping[str, Any], tools: tuple[ToolSpec, ...]) -> str:
    """ "auto", "none", "required" or a declared function's name (from `tool_choice`, else the
    legacy `function_call`)."""
    choice = request.get("tool_choice")
    param = "tool_choice"
    if choice is None:
        choice, param = request.get("function_call"), "function_call"
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise LocalProtocolError(
                f"{param}: 'required' needs tools", param=param, code="invalid_value"
            )
        return choice
    name: str
    if param == "tool_choice":
        name, param = choice["function"]["name"], "tool_choice.function.name"
    else:
        name, param = choice["name"], "function_call.name"
    if name not in {t.name for t in tools}:
        raise LocalProtocolError(
            f"{param}: {name!r} is not one of the declared tools", param=param, code="invalid_value"
        )
    return name


def _output_format(request: Mapping[str, Any]) -> OutputFormat | None:
    response_format = request.get("response_format")
    if response_format is None or response_format["type"] == "text":
        return None
    if response_format["type"] == "json_object":
        return OutputFormat(type="json_object")
    spec = response_format["json_schema"]
    schema = spec.get("schema")
    if schema is not None:
        check_schema(schema, "response_format.json_schema.schema")
    return OutputFormat(
        type="json_schema", name=spec["name"], schema=schema, strict=spec.get("strict") is True
    )


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    """The stop strings; an empty one could never end anything and is dropped."""
    if stop is None:
        return ()
    strings = [stop] if isinstance(stop, str) else stop
    return tuple(dict.fromkeys(s for s in strings if s))
