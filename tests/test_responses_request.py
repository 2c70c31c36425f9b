"""translator.responses._request: a Responses API request → the chat request the pipeline serves.

Every accepted request is also checked against schemas/openai/responses-request.json, and the
chat request it maps to is planned by `plan_chat` (the one pipeline accepts what we produce).
"""

from __future__ import annotations

import base64
import functools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import validators

from schemas import load_schema
from translator import LocalProtocolError, RemoteProtocolError, plan_chat, plan_responses

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
PDF = base64.b64encode(b"%PDF-1.4 hello").decode()


@functools.cache
def _request_validator() -> Any:
    # The spec's input unions overlap (a `{"type": "message", "role": "user", "content": [...]}`
    # item is both an EasyInputMessage and an InputMessage), so JSON Schema's strict `oneOf`
    # refuses the commonest request there is. OpenAPI means "one of these shapes"
    # (discriminated by `type`): judged here with `anyOf` semantics, every other keyword as is.
    schema = load_schema("openai.responses.request")
    cls = validators.validator_for(schema)
    loose = validators.extend(cls, {"oneOf": cls.VALIDATORS["anyOf"]})
    return loose(schema)


def assert_valid_request(request: Any) -> None:
    errors = [e.message for e in _request_validator().iter_errors(request)]
    assert not errors, errors


def plan(request: dict[str, Any], **kw: Any):
    assert_valid_request(request)
    result = plan_responses(request, **kw)
    plan_chat(result.chat_request)  # the chat side takes it as it is
    return result


def refused(request: Any, **kw: Any) -> LocalProtocolError:
    with pytest.raises(LocalProtocolError) as caught:
        plan_responses(request, **kw)
    assert caught.value.status == 400
    return caught.value


# --- mapping -------------------------------------------------------------------------------


def test_string_input_is_one_user_message_streamed_with_usage():
    result = plan({"model": "kimi", "input": "hello"})
    assert result.chat_request == {
        "model": "kimi",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert result.stream is False
    assert result.store is True
    assert result.input_items == ({"type": "message", "role": "user", "content": "hello"},)
    assert result.echo["previous_response_id"] is None
    assert "user" not in result.echo
    assert result.echo["tool_choice"] == "auto"
    assert result.echo["text"] == {"format": {"type": "text"}}


def test_instructions_become_a_system_message_first():
    result = plan({"model": "kimi", "instructions": "be brief", "input": "hi", "stream": True})
    assert result.chat_request["messages"][0] == {"role": "system", "content": "be brief"}
    assert result.stream is True
    assert result.echo["instructions"] == "be brief"


def test_content_parts_map_onto_chat_parts():
    result = plan(
        {
            "model": "kimi",
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": PNG, "detail": "low"},
                        {
                            "type": "input_image",
                            "image_url": "https://a.example/x.png",
                            "detail": "original",
                        },
                        {"type": "input_file", "file_data": PDF, "filename": "a.pdf"},
                        {"type": "input_file", "file_data": PDF},
                        {"type": "input_file", "file_url": "https://a.example/b.pdf"},
                    ],
                },
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "seen", "annotations": [], "logprobs": []},
                        {"type": "refusal", "refusal": "no"},
                    ],
                },
            ],
        }
    )
    user, assistant = result.chat_request["messages"]
    assert user["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://a.example/x.png"}},
        {"type": "file", "file": {"file_data": PDF, "filename": "a.pdf"}},
        {"type": "file", "file": {"file_data": PDF}},
        {"type": "file", "file_url": {"url": "https://a.example/b.pdf"}},
    ]
    assert assistant == {
        "role": "assistant",
        "content": [{"type": "text", "text": "seen"}, {"type": "refusal", "refusal": "no"}],
    }


def test_function_calls_and_outputs_map_onto_tool_calls_and_tool_messages():
    result = plan(
        {
            "model": "kimi",
            "input": [
                {"type": "function_call", "call_id": "c0", "name": "f", "arguments": "{}"},
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": "calling"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "custom_tool_call", "call_id": "c2", "name": "patch", "input": "diff"},
                {"type": "custom_tool_call", "call_id": "c3", "name": "patch", "input": "more"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [
                        {"type": "input_text", "text": "two"},
                        {"type": "input_text", "text": "lines"},
                    ],
                },
                {"type": "custom_tool_call_output", "call_id": "c3", "output": "three"},
            ],
        }
    )
    messages = result.chat_request["messages"]
    call = lambda i, name, args: {  # noqa: E731
        "id": f"c{i}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }
    assert messages == [
        {"role": "assistant", "content": None, "tool_calls": [call(0, "f", "{}")]},
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "calling",
            "tool_calls": [
                call(1, "f", '{"a":1}'),
                call(2, "patch", "diff"),
                call(3, "patch", "more"),
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two\nlines"},
        {"role": "tool", "tool_call_id": "c3", "content": "three"},
    ]


def test_options_map_onto_chat_fields():
    request = {
        "model": "kimi",
        "input": "hi",
        "tools": [
            {"type": "web_search"},
            {
                "type": "function",
                "name": "f",
                "description": "d",
                "parameters": {"type": "object", "properties": {}},
                "strict": True,
            },
            {"type": "function", "name": "g", "parameters": None, "strict": None},
        ],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {
            "format": {
                "type": "json_schema",
                "name": "n",
                "schema": {"type": "object"},
                "description": "d",
                "strict": True,
            }
        },
        "reasoning": {"effort": "high", "summary": "auto"},
        "max_output_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u1",
        "parallel_tool_calls": False,
        "metadata": {"k": "v"},
        "store": False,
        "background": False,
        "include": ["reasoning.encrypted_content"],
    }
    result = plan(request)
    chat = result.chat_request
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d",
                "parameters": {"type": "object", "properties": {}},
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "g"}},
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "n",
            "schema": {"type": "object"},
            "description": "d",
            "strict": True,
        },
    }
    assert chat["reasoning_effort"] == "high"
    assert chat["max_completion_tokens"] == 64
    assert (chat["temperature"], chat["top_p"], chat["user"]) == (0.5, 0.9, "u1")
    assert chat["parallel_tool_calls"] is False
    assert result.store is False
    echo = result.echo
    assert echo["tools"] == request["tools"]
    assert echo["reasoning"] == {"effort": "high", "summary": "auto"}
    assert echo["parallel_tool_calls"] is False
    assert echo["user"] == "u1"
    assert echo["metadata"] == {"k": "v"}
    assert echo["store"] is False


@pytest.mark.parametrize("fmt", ["text", "json_object"])
def test_plain_formats(fmt):
    result = plan(
        {"model": "kimi", "input": "x", "text": {"format": {"type": fmt}}, "tool_choice": "none"}
    )
    assert result.chat_request["response_format"] == {"type": fmt}
    assert result.chat_request["tool_choice"] == "none"


def test_continuing_posts_into_the_conversation():
    result = plan({"model": "kimi", "input": "next"}, conversation_id="conv1", continues="resp_1")
    assert result.chat_request["conversation_id"] == "conv1"
    assert result.echo["previous_response_id"] == "resp_1"


def test_an_unsafe_conversation_id_is_refused():
    err = refused({"model": "kimi", "input": "x"}, conversation_id="../x")
    assert err.param == "previous_response_id"


def test_history_goes_first_and_its_errors_name_the_previous_response():
    history = [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_image", "image_url": "ftp://old", "detail": "auto"}],
        },
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "seen", "annotations": [], "logprobs": []}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    result = plan_responses(
        {
            "model": "kimi",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": "ftp://new", "detail": "auto"}
                    ],
                }
            ],
        },
        history=history,
        continues="resp_1",
    )
    assert [m["role"] for m in result.chat_request["messages"]] == ["user", "assistant", "user"]
    assert result.input_items[:3] == tuple(history)
    assert len(result.input_items) == 4
    assert result.echo["previous_response_id"] == "resp_1"
    old = LocalProtocolError("x", param="messages[0].content[0].image_url.url")
    new = LocalProtocolError("x", param="messages[2].content[0].image_url.url")
    assert result.rename(old).param == "previous_response_id"
    assert result.rename(new).param == "input[0].content[0].image_url"
    with pytest.raises(LocalProtocolError) as caught:
        plan_chat(result.chat_request)
    assert result.rename(caught.value).param == "previous_response_id"


# --- refusals, named in Responses terms ------------------------------------------------------

REFUSALS = [
    ([], "", "invalid_type"),
    ({"input": "x"}, "model", "missing_required_field"),
    ({"model": "", "input": "x"}, "model", "invalid_value"),
    ({"model": 1, "input": "x"}, "model", "invalid_type"),
    ({"model": "kimi"}, "input", "missing_required_field"),
    ({"model": "kimi", "input": 3}, "input", "invalid_type"),
    ({"model": "kimi", "input": None}, "input", "invalid_type"),
    ({"model": "kimi", "input": [{"content": "x"}]}, "input[0].type", "missing_required_field"),
    ({"model": "kimi", "input": [{"type": "nope"}]}, "input[0].type", "invalid_value"),
    ({"model": "kimi", "input": [{"type": "reasoning", "summary": []}]}, "input", "invalid_value"),
    (
        {"model": "kimi", "input": [{"role": "tool", "content": "x"}]},
        "input[0].role",
        "invalid_value",
    ),
    (
        {"model": "kimi", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
        "input[0].content[0].image_url",
        "missing_required_field",
    ),
    (
        {
            "model": "kimi",
            "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}],
        },
        "input[0].content[0].file_id",
        "unsupported_value",
    ),
    (
        {"model": "kimi", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
        "input[0].content[0].file_data",
        "missing_required_field",
    ),
    (
        {
            "model": "kimi",
            "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}],
        },
        "input[0].content[0].file_id",
        "unsupported_value",
    ),
    (
        {
            "model": "kimi",
            "input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
        },
        "input[0].content[0]",
        "unsupported_value",
    ),
    (
        {
            "model": "kimi",
            "input": [{"role": "system", "content": [{"type": "input_image", "image_url": PNG}]}],
        },
        "input[0].content[0]",
        "unsupported_value",
    ),
    (
        {
            "model": "kimi",
            "input": [{"role": "developer", "content": [{"type": "refusal", "refusal": "no"}]}],
        },
        "input[0].content[0]",
        "unsupported_value",
    ),
    (
        {
            "model": "kimi",
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_image", "image_url": PNG}],
                }
            ],
        },
        "input[0].output[0]",
        "unsupported_value",
    ),
    (
        {
            "model": "kimi",
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_file", "file_data": PDF}],
                }
            ],
        },
        "input[0].output[0]",
        "unsupported_value",
    ),
    (
        {"model": "kimi", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
        "input[0].call_id",
        "missing_required_field",
    ),
    (
        {"model": "kimi", "input": "x", "tools": [{"name": "f"}]},
        "tools[0].type",
        "missing_required_field",
    ),
    ({"model": "kimi", "input": "x", "tools": [{"type": 1}]}, "tools[0].type", "invalid_type"),
    ({"model": "kimi", "input": "x", "tools": ["f"]}, "tools[0]", "invalid_type"),
    (
        {"model": "kimi", "input": "x", "tools": [{"type": "function"}]},
        "tools[0].name",
        "missing_required_field",
    ),
    ({"model": "kimi", "input": "x", "tool_choice": "any"}, "tool_choice", "invalid_value"),
    ({"model": "kimi", "input": "x", "tool_choice": 1}, "tool_choice", "invalid_type"),
    (
        {"model": "kimi", "input": "x", "tool_choice": {"type": "web_search_preview"}},
        "tool_choice.type",
        "unsupported_value",
    ),
    (
        {"model": "kimi", "input": "x", "tool_choice": {"type": "function"}},
        "tool_choice.name",
        "missing_required_field",
    ),
    (
        {"model": "kimi", "input": "x", "text": {"format": {"type": "json_schema"}}},
        "text.format.name",
        "missing_required_field",
    ),
    (
        {"model": "kimi", "input": "x", "reasoning": {"effort": "extreme"}},
        "reasoning.effort",
        "invalid_value",
    ),
    ({"model": "kimi", "input": "x", "max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
    ({"model": "kimi", "input": "x", "temperature": 3}, "temperature", "invalid_value"),
    ({"model": "kimi", "input": "x", "background": True}, "background", "unsupported_value"),
    (
        {"model": "kimi", "input": "x", "conversation": "conv_1"},
        "conversation",
        "unsupported_value",
    ),
    ({"model": "kimi", "input": "x", "prompt": {"id": "p"}}, "prompt", "unsupported_value"),
    (
        {"model": "kimi", "input": "x", "previous_response_id": 5},
        "previous_response_id",
        "invalid_type",
    ),
]


@pytest.mark.parametrize(("request_", "param", "code"), REFUSALS)
def test_refusals_name_the_field(request_, param, code):
    err = refused(request_)
    assert (err.param, err.code) == (param or None, code)
    if param:
        assert err.message.startswith(param + ":")


# --- errors from the chat side, renamed ------------------------------------------------------


def test_chat_side_errors_are_renamed_into_responses_terms():
    result = plan_responses(
        {
            "model": "kimi",
            "instructions": "sys",
            "input": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]},
            ],
            "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],
            "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}},
            "max_output_tokens": 9,
            "reasoning": {"effort": "low"},
            "tool_choice": {"type": "function", "name": "f"},
        }
    )
    with pytest.raises(LocalProtocolError) as caught:
        plan_chat(result.chat_request)
    err = result.rename(caught.value)
    assert err.param == "input[1].content[0].image_url"
    assert err.message.startswith("input[1].content[0].image_url:")
    renamed = {
        "messages[0]": "instructions",
        "messages[1].content": "input[0].content",
        "tools[0].function.parameters": "tools[1].parameters",
        "tools[0]": "tools[1]",
        "response_format.json_schema.schema": "text.format.schema",
        "response_format": "text.format",
        "max_completion_tokens": "max_output_tokens",
        "reasoning_effort": "reasoning.effort",
        "tool_choice.function.name": "tool_choice.name",
        "messages": "input",
    }
    for chat, ours in renamed.items():
        assert result.rename(LocalProtocolError("bad", param=chat)).param == ours


def test_renaming_keeps_what_has_no_other_name():
    result = plan_responses(
        {
            "model": "kimi",
            "input": [
                {"role": "user", "content": [{"type": "input_file", "file_url": "ftp://x"}]},
                {"role": "user", "content": [{"type": "input_file", "file_data": "@@"}]},
            ],
        }
    )
    untouched = LocalProtocolError("x", param=None)
    assert result.rename(untouched) is untouched
    same = LocalProtocolError("temperature: bad", param="temperature")
    assert result.rename(same) is same
    upstream = RemoteProtocolError("busy", status=429, param="messages[0]")
    upstream.retry_after = 3.0
    renamed = result.rename(upstream)
    assert isinstance(renamed, RemoteProtocolError)
    assert (renamed.param, renamed.message, renamed.status, renamed.retry_after) == (
        "input[0]",
        "busy",
        429,
        3.0,
    )
    assert (
        result.rename(LocalProtocolError("x", param="messages[0].content[0].file_url.url")).param
        == "input[0].content[0].file_url"
    )
    assert (
        result.rename(LocalProtocolError("x", param="messages[1].content[0].file.file_data")).param
        == "input[1].content[0].file_data"
    )
    # "messages[1]x" is not inside messages[1] (= input[0]): only the bare `messages` rule applies
    assert result.rename(LocalProtocolError("x", param="messages[1]x")).param == "input[1]x"


# --- a property: whatever we accept, the chat side plans or refuses cleanly ------------------

_part = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, st.text(max_size=5)),
    st.just({"type": "input_image", "image_url": PNG, "detail": "auto"}),
    st.just({"type": "input_image", "image_url": "data:image/png;base64,@@", "detail": "high"}),
    st.just({"type": "input_file", "file_data": PDF, "filename": "a/b.pdf"}),
    st.just({"type": "input_file", "file_url": "https://a.example/b.pdf"}),
)
_item = st.one_of(
    st.builds(
        lambda r, c: {"role": r, "content": c},
        st.sampled_from(["user", "system", "developer", "assistant"]),
        st.text(max_size=5),
    ),
    st.builds(
        lambda c: {"type": "message", "role": "user", "content": c}, st.lists(_part, max_size=3)
    ),
    st.just({"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}),
    st.just({"type": "function_call_output", "call_id": "c1", "output": "ok"}),
    st.just({"type": "reasoning", "id": "rs_1", "summary": []}),
)


@given(st.lists(_item, min_size=1, max_size=5), st.booleans())
def test_accepted_requests_plan_or_refuse_with_a_responses_param(items, instructed):
    request: dict[str, Any] = {"model": "kimi", "input": items}
    if instructed:
        request["instructions"] = "be brief"
    try:
        result = plan_responses(request)
    except LocalProtocolError as err:
        refusal = err
    else:
        refusal = None
    if refusal is not None:
        assert str(refusal.param).startswith("input")
        return
    assert_valid_request(request)
    try:
        plan_chat(result.chat_request)
    except LocalProtocolError as err:
        renamed = result.rename(err)
        assert renamed.param is None or not renamed.param.startswith("messages")


def test_the_echo_fills_in_the_function_tool_fields_the_spec_requires():
    # the official Response object requires a function tool's `strict` and `parameters`
    result = plan_responses(
        {
            "model": "kimi",
            "input": "x",
            "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],
        }
    )
    assert result.echo["tools"] == [
        {"type": "web_search"},
        {"type": "function", "name": "f", "strict": None, "parameters": None},
    ]


def test_null_options_echo_their_defaults():
    # null means absent; the Response object repeats OpenAI's defaults, never a null the spec
    # does not allow (tool_choice is required and not nullable there)
    result = plan_responses(
        {"model": "kimi", "input": "x", "tool_choice": None, "tools": None, "text": None}
    )
    assert result.echo["tool_choice"] == "auto"
    assert result.echo["tools"] == []
    assert result.echo["text"] == {"format": {"type": "text"}}


def test_an_output_without_its_call_is_refused_in_responses_terms():
    result = plan_responses(
        {
            "model": "kimi",
            "input": [
                {"role": "user", "content": "go"},
                {"type": "function_call_output", "call_id": "c9", "output": "r"},
            ],
        }
    )
    with pytest.raises(LocalProtocolError) as caught:
        plan_chat(result.chat_request)
    err = result.rename(caught.value)
    assert (err.param, err.code) == ("input[1].call_id", "invalid_value")
    assert err.message.startswith("input[1].call_id: 'c9' answers no tool call")
    # continuing a stored response: its calls are in the Kimi conversation
    continued = plan_responses(
        {
            "model": "kimi",
            "input": [{"type": "function_call_output", "call_id": "c9", "output": "r"}],
        },
        conversation_id="cq1p2n3d4e5f6g7h8i9j",
    )
    plan_chat(continued.chat_request)


def test_a_tool_name_the_call_markup_cannot_carry_is_named_in_responses_terms():
    result = plan_responses(
        {"model": "kimi", "input": "x", "tools": [{"type": "function", "name": "a>b"}]}
    )
    with pytest.raises(LocalProtocolError) as caught:
        plan_chat(result.chat_request)
    err = result.rename(caught.value)
    assert (err.param, err.code) == ("tools[0].name", "invalid_value")
    assert err.message.startswith("tools[0].name: the tool name 'a>b' cannot hold")
