"""Hand validation of an OpenAI `CreateChatCompletionRequest` (already-parsed JSON).

The rules are those of schemas/openai/accepted-chat-request.json, written as small checkers
composed the way the schema composes them, so a failure can name the exact field in OpenAI's
`param` style (`messages[2].content[0].type`). A property test runs both on generated and mutated
requests and asserts they agree. We validate by hand, not with jsonschema, because the translator
is stdlib-only and a schema error path is not an OpenAI `param`.

On top of the schema, `validate_request` refuses what Kimi cannot do (code "unsupported_value"),
rather than silently answering something else:

- `n` > 1: Kimi gives one answer per request;
- `input_audio` content parts: Kimi's web chat takes no audio;
- OpenAI `file_id`s (without `file_data`): we cannot read OpenAI's file store.

`max_tokens` / `max_completion_tokens` must be at least 1. Null means absent for every optional
field, as OpenAI treats it (`"tools": null`, `"user": null`, a message's `"name": null`, ...).

Used: model, messages (with an assistant's `tool_calls` / `function_call` and `tool` /
`function` results rendered into the history), stream, stream_options.include_usage,
reasoning_effort (thinking on/off), tools, tool_choice, parallel_tool_calls, legacy functions /
function_call, response_format, stop, max_tokens, max_completion_tokens (see docs/tools.md), and
our own conversation_id and use_search. Accepted with their types checked, but without effect
because Kimi's web chat has no such knob: temperature, top_p, presence_penalty,
frequency_penalty, logit_bias, logprobs, top_logprobs, user, seed, modalities, metadata, store,
service_tier, a tool's `strict` (arguments are always validated), and a message's `name` and
`refusal`. Unknown top-level fields are ignored, as OpenAI does; unknown fields inside messages and
content parts are ignored too (clients replay extras such as `reasoning_content`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from translator._errors import LocalProtocolError

__all__ = ["check_conversation_id", "validate_request"]

Check = Callable[[Any, str], None]

_JSON_TYPES: Final[Mapping[str, Callable[[Any], bool]]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    # JSON Schema: 1.0 is an integer; a bool is never a number.
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and math.isfinite(v) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def _json_type(value: Any) -> str:
    for name in ("object", "array", "string", "boolean", "number", "null"):
        if _JSON_TYPES[name](value):
            return name
    return type(value).__name__


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _fail(path: str, message: str, code: str) -> LocalProtocolError:
    return LocalProtocolError(
        f"{path}: {message}" if path else message, param=path or None, code=code
    )


def _expect(value: Any, path: str, *types: str) -> None:
    if not any(_JSON_TYPES[t](value) for t in types):
        wanted = " or ".join(types)
        raise _fail(path, f"expected {wanted}, got {_json_type(value)}", "invalid_type")


# --- checker factories: one per JSON Schema keyword family we use -------------------------------


def _typed(*types: str) -> Check:
    def check(value: Any, path: str) -> None:
        _expect(value, path, *types)

    return check


def _ranged(kind: str, low: float | None = None, high: float | None = None) -> Check:
    def check(value: Any, path: str) -> None:
        _expect(value, path, kind)
        # Written as `value < low` like jsonschema's `minimum`, so both treat NaN alike.
        if (low is not None and value < low) or (high is not None and value > high):
            wanted = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise _fail(path, f"must be {wanted}, got {value!r}", "invalid_value")

    return check


def _enum(*values: str) -> Check:
    def check(value: Any, path: str) -> None:
        if not (isinstance(value, str) and value in values):
            raise _fail(path, f"must be one of {list(values)}, got {value!r}", "invalid_value")

    return check


def _array(item: Check, *, min_items: int = 0, max_items: int | None = None) -> Check:
    def check(value: Any, path: str) -> None:
        _expect(value, path, "array")
        if len(value) < min_items:
            raise _fail(path, f"must have at least {min_items} item(s)", "invalid_value")
        if max_items is not None and len(value) > max_items:
            raise _fail(path, f"must have at most {max_items} items", "invalid_value")
        for i, element in enumerate(value):
            item(element, f"{path}[{i}]")

    return check


def _values(item: Check) -> Check:
    """An object whose every value passes `item` (JSON Schema `additionalProperties`)."""

    def check(value: Any, path: str) -> None:
        _expect(value, path, "object")
        for key, element in value.items():
            item(element, _child(path, str(key)))

    return check


def _object(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None) -> Check:
    def check(value: Any, path: str) -> None:
        _expect(value, path, "object")
        for key in required:
            if key not in value:
                raise _fail(_child(path, key), "is required", "missing_required_field")
        for key, field_check in required.items():
            field_check(value[key], _child(path, key))
        for key, field_check in (optional or {}).items():
            # Null means absent for an optional field, as OpenAI treats it.
            if value.get(key) is not None:
                field_check(value[key], _child(path, key))

    return check


def _by_type(**alternatives: Check) -> Check:
    """`anyOf` whose branches differ by JSON type: dispatch on the type of the value."""

    def check(value: Any, path: str) -> None:
        for json_type, branch in alternatives.items():
            if _JSON_TYPES[json_type](value):
                branch(value, path)
                return
        _expect(value, path, *alternatives)

    return check


def _tagged(tag: str, branches: Mapping[str, Check]) -> Check:
    """`anyOf` whose branches each fix `tag` to a constant: dispatch on that field."""

    def check(value: Any, path: str) -> None:
        _expect(value, path, "object")
        tag_path = _child(path, tag)
        if tag not in value:
            raise _fail(tag_path, "is required", "missing_required_field")
        kind = value[tag]
        _expect(kind, tag_path, "string")
        if kind not in branches:
            raise _fail(tag_path, f"must be one of {list(branches)}, got {kind!r}", "invalid_value")
        branches[kind](value, path)

    return check


def _unsupported(message: str) -> Check:
    def check(value: Any, path: str) -> None:
        raise _fail(path, message, "unsupported_value")

    return check


# --- the request --------------------------------------------------------------------------------

_STRING = _typed("string")
_BOOLEAN = _typed("boolean")
_OBJECT = _typed("object")

_TEXT_PART = _object({"type": _STRING, "text": _STRING})
_TEXT_CONTENT = _by_type(string=_STRING, array=_array(_tagged("type", {"text": _TEXT_PART})))


def _check_file_part(part: Any, path: str) -> None:
    # The seed's `file_url` form wins when present (the schema forbids `file_url` in OpenAI's form).
    if "file_url" in part:
        _object({"file_url": _object({"url": _STRING})})(part, path)
        return
    _object({"file": _object({}, {"file_data": _STRING, "file_id": _STRING, "filename": _STRING})})(
        part, path
    )
    file = part["file"]
    if "file_data" not in file:
        if "file_id" not in file:
            raise _fail(_child(path, "file.file_data"), "is required", "missing_required_field")
        raise _fail(
            _child(path, "file.file_id"),
            "OpenAI file ids cannot be used here: kimi-free-api cannot read OpenAI's file store; "
            "send the content as file_data (a data: URL) instead",
            "unsupported_value",
        )


_USER_PART = _tagged(
    "type",
    {
        "text": _TEXT_PART,
        "image_url": _object(
            {
                "image_url": _by_type(
                    string=_STRING,
                    object=_object({"url": _STRING}, {"detail": _enum("auto", "low", "high")}),
                )
            }
        ),
        "file": _check_file_part,
        "input_audio": _unsupported("audio input is not supported: Kimi's web chat takes no audio"),
    },
)

_FUNCTION_CALL = _object({"name": _STRING, "arguments": _STRING})

_MESSAGE = _tagged(
    "role",
    {
        "system": _object({"content": _TEXT_CONTENT}, {"name": _STRING}),
        "developer": _object({"content": _TEXT_CONTENT}, {"name": _STRING}),
        "user": _object(
            {"content": _by_type(string=_STRING, array=_array(_USER_PART))}, {"name": _STRING}
        ),
        "assistant": _object(
            {},
            {
                "name": _STRING,
                "content": _by_type(
                    string=_STRING,
                    array=_array(
                        _tagged(
                            "type",
                            {"text": _TEXT_PART, "refusal": _object({"refusal": _STRING})},
                        )
                    ),
                ),
                "refusal": _STRING,
                "tool_calls": _array(
                    _object({"id": _STRING, "type": _enum("function"), "function": _FUNCTION_CALL})
                ),
                "function_call": _FUNCTION_CALL,
            },
        ),
        "tool": _object({"content": _TEXT_CONTENT, "tool_call_id": _STRING}),
        "function": _object(
            {"content": _by_type(string=_STRING, null=_typed("null")), "name": _STRING}
        ),
    },
)


def _check_n(value: Any, path: str) -> None:
    _ranged("integer", 1, 128)(value, path)
    if value > 1:
        raise _fail(
            path, "n > 1 is not supported: Kimi gives one answer per request", "unsupported_value"
        )


_NAMED_FUNCTION = _object({"name": _STRING})
_FUNCTION = _object(
    {"name": _STRING},
    {"description": _STRING, "parameters": _OBJECT, "strict": _BOOLEAN},
)
_JSON_SCHEMA_FORMAT = _object(
    {"name": _STRING}, {"description": _STRING, "schema": _OBJECT, "strict": _BOOLEAN}
)

_FIELDS: Final[Mapping[str, Check]] = {
    "stream": _BOOLEAN,
    "stream_options": _object({}, {"include_usage": _BOOLEAN}),
    "temperature": _ranged("number", 0, 2),
    "top_p": _ranged("number", 0, 1),
    "n": _check_n,
    "max_tokens": _ranged("integer", 1),
    "max_completion_tokens": _ranged("integer", 1),
    "stop": _by_type(string=_STRING, array=_array(_STRING, max_items=4)),
    "presence_penalty": _ranged("number", -2, 2),
    "frequency_penalty": _ranged("number", -2, 2),
    "logit_bias": _values(_typed("integer")),
    "logprobs": _BOOLEAN,
    "top_logprobs": _ranged("integer", 0, 20),
    "user": _STRING,
    "seed": _typed("integer"),
    "tools": _array(_object({"type": _enum("function"), "function": _FUNCTION})),
    "tool_choice": _by_type(
        string=_enum("none", "auto", "required"),
        object=_object({"type": _enum("function"), "function": _NAMED_FUNCTION}),
    ),
    "parallel_tool_calls": _BOOLEAN,
    "functions": _array(_FUNCTION, min_items=1, max_items=128),
    "function_call": _by_type(string=_enum("none", "auto"), object=_NAMED_FUNCTION),
    "response_format": _tagged(
        "type",
        {
            "text": _OBJECT,
            "json_object": _OBJECT,
            "json_schema": _object({"json_schema": _JSON_SCHEMA_FORMAT}),
        },
    ),
    "reasoning_effort": _enum("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "modalities": _array(_enum("text", "audio")),
    "metadata": _values(_STRING),
    "store": _BOOLEAN,
    "service_tier": _STRING,
    "conversation_id": _STRING,
    "use_search": _BOOLEAN,
}


def _check_model(value: Any, path: str) -> None:
    _expect(value, path, "string")
    if not value:
        raise _fail(path, "must not be empty", "invalid_value")


_REQUEST = _object({"model": _check_model, "messages": _array(_MESSAGE, min_items=1)}, _FIELDS)

#: ids we put into a URL path: a safe charset only, so a client cannot steer the path
_SAFE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def validate_request(request: Any) -> None:
    """Check an OpenAI chat completion request (parsed JSON) against our schema and limits.

    Raises:
        LocalProtocolError: the first problem found; `param` names the field
            (`messages[2].content[0].type`), `code` is "invalid_type", "invalid_value",
            "missing_required_field" or "unsupported_value".
    """
    if not isinstance(request, dict):
        raise _fail(
            "", f"the request body must be a JSON object, got {_json_type(request)}", "invalid_type"
        )
    _REQUEST(request, "")


def check_conversation_id(value: str, param: str) -> str:
    """`value` if it is safe to put into a URL path (1-64 of [0-9A-Za-z_-]).

    Raises:
        LocalProtocolError: anything else (code "invalid_value", `param` as given).
    """
    if _SAFE_ID.fullmatch(value) is None:
        raise LocalProtocolError(
            f"{param} must be 1-64 characters of [0-9A-Za-z_-], got {value!r}",
            param=param,
            code="invalid_value",
        )
    return value
