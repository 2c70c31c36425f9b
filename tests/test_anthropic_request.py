"""translate_messages: an Anthropic Messages request → the OpenAI chat request (and its errors,
named in Anthropic's terms)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.schema_check import assert_valid
from translator import (
    CLAUDE_MODEL,
    CLAUDE_THINKING_MODEL,
    LocalProtocolError,
    plan_chat,
    translate_messages,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
PDF = base64.b64encode(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n").decode()


def request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(fields)
    return body


def chat_of(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Translate a schema-valid request; the result must be a chat request our chat pipeline
    accepts (accepted-chat-request.json: it may use our `file_url` part) and plans."""
    assert_valid("anthropic.count_tokens_request" if kw else "anthropic.request", body)
    chat = translate_messages(body, **kw).chat
    assert_valid("openai.request.accepted", chat)
    plan_chat(chat)
    return chat


def test_minimal_request():
    call = translate_messages(request())
    assert call.model == "claude-sonnet-4-5"
    assert call.stream is False
    assert call.thinking is False
    assert call.stop_sequences == ()
    assert call.chat == {
        "model": CLAUDE_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 64,
    }


def test_system_blocks_text_image_and_documents():
    body = request(
        system=[
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be kind."},
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://e.com/a.png"}},
                    {
                        "type": "document",
                        "title": "spec",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    },
                    {"type": "document", "source": {"type": "url", "url": "https://e.com/a.pdf"}},
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "plain"},
                    },
                    {"type": "document", "source": {"type": "content", "content": "inline"}},
                    {
                        "type": "document",
                        "source": {
                            "type": "content",
                            "content": [
                                {"type": "text", "text": "c1"},
                                {
                                    "type": "image",
                                    "source": {"type": "url", "url": "https://e.com/b.png"},
                                },
                            ],
                        },
                    },
                ],
            }
        ],
        stream=True,
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        metadata={"user_id": "u"},
        output_config={"effort": "high"},
        context_management={"edits": []},
    )
    chat = chat_of(body)
    assert translate_messages(body).stream is True
    system, user = chat["messages"]
    assert system == {"role": "system", "content": "Be brief.\nBe kind."}
    parts = user["content"]
    assert parts[0] == {"type": "text", "text": "look"}
    assert parts[1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert parts[2] == {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}
    assert parts[3] == {
        "type": "file",
        "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "spec.pdf"},
    }
    assert parts[4] == {"type": "file", "file_url": {"url": "https://e.com/a.pdf"}}
    encoded = base64.b64encode(b"plain").decode()
    assert parts[5] == {
        "type": "file",
        "file": {"file_data": f"data:text/plain;base64,{encoded}", "filename": "document.txt"},
    }
    assert parts[6] == {"type": "text", "text": "inline"}
    assert parts[7] == {"type": "text", "text": "c1"}
    assert parts[8] == {"type": "image_url", "image_url": {"url": "https://e.com/b.png"}}


def test_empty_system_is_dropped_and_null_means_absent():
    chat = chat_of(request(system=""))
    assert [m["role"] for m in chat["messages"]] == ["user"]
    chat = translate_messages(request(system=None, tools=None, temperature=None)).chat
    assert [m["role"] for m in chat["messages"]] == ["user"]


def test_tool_round_trip_history():
    body = request(
        messages=[
            {"role": "user", "content": "read a.txt"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "kfa1.x"},
                    {"type": "redacted_thinking", "data": "zzz"},
                    {"type": "text", "text": "Reading."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "Read",
                        "input": {"file_path": "a.txt"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "Read",
                        "input": {"file_path": "b.txt"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "1\thello\n"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "no such file"},
                            {
                                "type": "image",
                                "source": {"type": "url", "url": "https://e.com/s.png"},
                            },
                        ],
                    },
                    {"type": "text", "text": "go on"},
                ],
            },
            {"role": "assistant", "content": "plain answer"},
            # a result may answer any earlier call (only a call never made is refused)
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2"}]},
        ],
        tools=[
            {
                "name": "Read",
                "description": "Read a file",
                "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "custom", "name": "Bash", "input_schema": {"type": "object"}},
        ],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    chat = chat_of(body)
    messages = chat["messages"]
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
        "assistant",
        "tool",
    ]
    assistant = messages[1]
    assert assistant["content"] == "Reading."
    assert assistant["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "Read", "arguments": '{"file_path": "a.txt"}'},
        },
        {
            "id": "toolu_2",
            "type": "function",
            "function": {"name": "Read", "arguments": '{"file_path": "b.txt"}'},
        },
    ]
    assert messages[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "1\thello\n"}
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "toolu_2",
        "content": "[tool error]\nno such file",
    }
    assert messages[4]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://e.com/s.png"}},
        {"type": "text", "text": "go on"},
    ]
    assert messages[5] == {"role": "assistant", "content": "plain answer"}
    assert messages[6] == {"role": "tool", "tool_call_id": "toolu_2", "content": ""}
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}}},
                "description": "Read a file",
            },
        },
        {"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}},
    ]
    assert chat["tool_choice"] == "auto"
    assert chat["parallel_tool_calls"] is False


TOOLS = [{"name": "Read", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
    ],
)
def test_tool_choice(choice, expected):
    chat = chat_of(request(tools=TOOLS, tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


@pytest.mark.parametrize("choice", [{"type": "auto"}, {"type": "none"}])
def test_tool_choice_without_tools_is_dropped(choice):
    chat = chat_of(request(tool_choice=choice))
    assert "tool_choice" not in chat


@pytest.mark.parametrize(
    ("thinking", "model", "effort", "on"),
    [
        ({"type": "adaptive"}, CLAUDE_THINKING_MODEL, "high", True),
        ({"type": "enabled", "budget_tokens": 2048}, CLAUDE_THINKING_MODEL, "high", True),
        ({"type": "disabled"}, CLAUDE_MODEL, "none", False),
    ],
)
def test_thinking_maps_claude_names(thinking, model, effort, on):
    call = translate_messages(request(thinking=thinking))
    assert call.chat["model"] == model
    assert call.chat["reasoning_effort"] == effort
    assert call.thinking is on
    plan_chat(call.chat)


def test_kimi_names_pass_through():
    chat = chat_of(request(model="kimi-search", thinking={"type": "adaptive"}))
    assert chat["model"] == "kimi-search"
    assert chat["reasoning_effort"] == "high"


def test_stop_sequences():
    call = translate_messages(request(stop_sequences=["END", "STOP"]))
    assert call.chat["stop"] == ["END", "STOP"]
    assert call.stop_sequences == ("END", "STOP")
    assert "stop" not in translate_messages(request(stop_sequences=[])).chat


def test_count_only_needs_no_max_tokens():
    body = {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": "ignored",
    }
    call = translate_messages(body, count_only=True)
    assert "max_completion_tokens" not in call.chat
    assert call.stream is False


def test_system_role_message_and_string_content():
    body = request(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "rule"}]},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}]},
            {"role": "user", "content": "q2"},
        ]
    )
    chat = translate_messages(body).chat
    assert chat["messages"][0] == {"role": "system", "content": "rule"}
    assert chat["messages"][2] == {"role": "assistant", "content": "a"}


def test_a_system_turn_after_a_user_turn_goes_before_it():
    first = [
        {"role": "user", "content": "read a.txt"},
        {"role": "system", "content": "agents: ..."},
        {"role": "system", "content": [{"type": "text", "text": "skills: ..."}]},
    ]
    chat = translate_messages(request(messages=first)).chat
    assert [m["content"] for m in chat["messages"]] == ["agents: ...", "skills: ...", "read a.txt"]
    # The next turn resends it: the same order, so the remembered prefix still matches.
    second = [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go"}]
    again = translate_messages(request(messages=second)).chat
    assert again["messages"][:3] == chat["messages"]


BAD: list[tuple[Any, str, str]] = [
    ([], "", "invalid_type"),
    ({"max_tokens": 1, "messages": []}, "model", "missing_required_field"),
    (request(model=3), "model", "invalid_type"),
    (request(model=""), "model", "invalid_value"),
    (request(model=b"claude"), "model", "invalid_type"),
    ({"model": "m", "messages": []}, "max_tokens", "missing_required_field"),
    (request(max_tokens="9"), "max_tokens", "invalid_type"),
    (request(max_tokens=True), "max_tokens", "invalid_type"),
    (request(max_tokens=0), "max_tokens", "invalid_value"),
    ({"model": "m", "max_tokens": 1}, "messages", "missing_required_field"),
    (request(messages={}), "messages", "invalid_type"),
    (request(messages=[]), "messages", "invalid_value"),
    (request(messages=["x"]), "messages.0", "invalid_type"),
    (request(messages=[{"role": "bot", "content": "x"}]), "messages.0.role", "invalid_value"),
    (request(messages=[{"role": "user"}]), "messages.0.content", "missing_required_field"),
    (request(messages=[{"role": "user", "content": 5}]), "messages.0.content", "invalid_type"),
    (request(messages=[{"role": "user", "content": [5]}]), "messages.0.content.0", "invalid_type"),
    (
        request(messages=[{"role": "user", "content": [{}]}]),
        "messages.0.content.0.type",
        "missing_required_field",
    ),
    (
        request(messages=[{"role": "user", "content": [{"type": 1}]}]),
        "messages.0.content.0.type",
        "invalid_type",
    ),
    (
        request(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages.0.content.0.text",
        "missing_required_field",
    ),
    (
        request(messages=[{"role": "user", "content": [{"type": "search_result"}]}]),
        "messages.0.content.0.type",
        "unsupported_value",
    ),
    (
        request(messages=[{"role": "assistant", "content": [{"type": "server_tool_use"}]}]),
        "messages.0.content.0.type",
        "unsupported_value",
    ),
    (
        request(messages=[{"role": "user", "content": [{"type": "image"}]}]),
        "messages.0.content.0.source",
        "missing_required_field",
    ),
    (
        request(
            messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "x"}}]}]
        ),
        "messages.0.content.0.source.type",
        "invalid_value",
    ),
    (
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/bmp", "data": PNG},
                        }
                    ],
                }
            ]
        ),
        "messages.0.content.0.source.media_type",
        "invalid_value",
    ),
    (
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "%%%"},
                        }
                    ],
                }
            ]
        ),
        "messages.0.content.0.source.data",
        "invalid_value",
    ),
    (
        request(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                }
            ]
        ),
        "messages.0.content.0.source.type",
        "unsupported_value",
    ),
    (
        request(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "document", "source": {"type": "file", "file_id": "f"}}],
                }
            ]
        ),
        "messages.0.content.0.source.type",
        "unsupported_value",
    ),
    (
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/html", "data": ""},
                        }
                    ],
                }
            ]
        ),
        "messages.0.content.0.source.media_type",
        "invalid_value",
    ),
    (
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "content", "content": [{"type": "document"}]},
                        }
                    ],
                }
            ]
        ),
        "messages.0.content.0.source.content.0.type",
        "invalid_value",
    ),
    (
        request(messages=[{"role": "user", "content": [{"type": "tool_result"}]}]),
        "messages.0.content.0.tool_use_id",
        "missing_required_field",
    ),
    (
        request(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}],
                }
            ]
        ),
        "messages.0.content.0.is_error",
        "invalid_type",
    ),
    (
        request(
            messages=[
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "n", "input": []}],
                }
            ]
        ),
        "messages.0.content.0.input",
        "invalid_type",
    ),
    (
        request(messages=[{"role": "system", "content": [{"type": "image"}]}]),
        "messages.0.content.0.type",
        "invalid_value",
    ),
    (request(system=5), "system", "invalid_type"),
    (request(stream="yes"), "stream", "invalid_type"),
    (request(temperature=2), "temperature", "invalid_value"),
    (request(temperature="hot"), "temperature", "invalid_type"),
    (request(top_p=-1), "top_p", "invalid_value"),
    (request(top_k=0.5), "top_k", "invalid_type"),
    (request(metadata=[]), "metadata", "invalid_type"),
    (request(thinking="on"), "thinking", "invalid_type"),
    (request(thinking={"type": "max"}), "thinking.type", "invalid_value"),
    (request(thinking={"type": "enabled"}), "thinking.budget_tokens", "missing_required_field"),
    (
        request(thinking={"type": "enabled", "budget_tokens": 10}),
        "thinking.budget_tokens",
        "invalid_value",
    ),
    (request(stop_sequences="END"), "stop_sequences", "invalid_type"),
    (request(stop_sequences=[1]), "stop_sequences.0", "invalid_type"),
    (request(stop_sequences=list("abcde")), "stop_sequences", "unsupported_value"),
    (request(tools={}), "tools", "invalid_type"),
    (request(tools=[1]), "tools.0", "invalid_type"),
    (
        request(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        "tools.0.type",
        "unsupported_value",
    ),
    (request(tools=[{"name": "n"}]), "tools.0.input_schema", "missing_required_field"),
    (
        request(tools=[{"name": "n", "input_schema": {}, "description": 1}]),
        "tools.0.description",
        "invalid_type",
    ),
    (request(tool_choice="auto"), "tool_choice", "invalid_type"),
    (request(tool_choice={"type": "some"}), "tool_choice.type", "invalid_value"),
    (request(tool_choice={"type": "any"}), "tool_choice.type", "invalid_value"),
    (request(tool_choice={"type": "tool", "name": "x"}), "tool_choice.type", "invalid_value"),
    (
        request(tools=TOOLS, tool_choice={"type": "tool"}),
        "tool_choice.name",
        "missing_required_field",
    ),
    (
        request(tools=TOOLS, tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
        "tool_choice.disable_parallel_tool_use",
        "invalid_type",
    ),
    # what the chat pipeline would refuse under its own (OpenAI) names is checked here first
    (
        request(tools=[{"name": 'a"b', "input_schema": {"type": "object"}}]),
        "tools.0.name",
        "invalid_value",
    ),
    (
        request(tools=[{"name": "", "input_schema": {"type": "object"}}]),
        "tools.0.name",
        "invalid_value",
    ),
    (
        request(
            messages=[
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
            ]
        ),
        "messages.0.content.0.tool_use_id",
        "invalid_value",
    ),
    (
        request(
            messages=[
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t2", "name": "Read", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "x"},
                        {"type": "tool_result", "tool_use_id": "t1"},
                    ],
                },
            ],
            tools=TOOLS,
        ),
        "messages.2.content.1.tool_use_id",
        "invalid_value",
    ),
    (
        request(tools=[*TOOLS, {"name": "x", "input_schema": {"type": "nope"}}]),
        f"tools.{len(TOOLS)}.input_schema",
        "invalid_value",
    ),
    (request(tools=[*TOOLS, TOOLS[0]]), f"tools.{len(TOOLS)}.name", "invalid_value"),
    (
        request(tools=TOOLS, tool_choice={"type": "tool", "name": "nope"}),
        "tool_choice.name",
        "invalid_value",
    ),
    (
        request(
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "ftp://x"}}],
                },
            ]
        ),
        "messages.2.content.0.source.url",
        "invalid_value",
    ),
    (
        request(
            system="s",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "document", "source": {"type": "url", "url": "file:///x"}},
                    ],
                }
            ],
        ),
        "messages.0.content.1.source.url",
        "invalid_value",
    ),
    (
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "data:image/png;base64,!"},
                        }
                    ],
                }
            ]
        ),
        "messages.0.content.0.source.url",
        "invalid_value",
    ),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD)
def test_bad_requests_name_the_field(body, param, code):
    with pytest.raises(LocalProtocolError) as info:
        translate_messages(body)
    err = info.value
    assert err.status == 400
    assert err.code == code
    assert err.param == (param or None)
    if param:
        assert err.message.startswith(param + ":"), err.message


def test_a_float_integer_is_an_integer():
    chat = translate_messages(
        request(max_tokens=10.0, thinking={"type": "enabled", "budget_tokens": 2048.0})
    ).chat
    assert chat["max_completion_tokens"] == 10
    assert json.dumps(chat)
