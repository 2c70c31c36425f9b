"""The request side: validation (param names), message normalising and flattening, plan_chat."""

from __future__ import annotations

import base64
import copy
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import schema_errors
from tests.schema_check import assert_valid
from translator._errors import LocalProtocolError
from translator._plan import ChatPlan, InlineFile, Message, UrlFile
from translator.chat._messages import (
    LATEST_FILES_HINT,
    LATEST_HINT,
    flatten_messages,
    normalise_messages,
    wrap_urls,
)
from translator.chat._models import resolve_model
from translator.chat._request import plan_chat
from translator.chat._validate import check_conversation_id, validate_request
from translator.legacy._calls import completion_call

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
PDF_B64 = base64.b64encode(PDF).decode()
CONV = "cq1p2n3d4e5f6g7h8i9j"


def request(*messages, **fields):
    return {"model": "kimi", "messages": list(messages) or [user("hi")], **fields}


def user(content):
    return {"role": "user", "content": content}


def parts(*items):
    return user(list(items))


def wrapped(url):
    return f'<url id="" type="url" status="" title="" wc="">{url}</url>'


# --- validation: every failure names its field --------------------------------------------------

INVALID = [
    # (request, param, code)
    ([], None, "invalid_type"),
    ({"messages": [user("x")]}, "model", "missing_required_field"),
    ({"model": 1, "messages": [user("x")]}, "model", "invalid_type"),
    ({"model": "", "messages": [user("x")]}, "model", "invalid_value"),
    ({"model": "kimi"}, "messages", "missing_required_field"),
    ({"model": "kimi", "messages": []}, "messages", "invalid_value"),
    ({"model": "kimi", "messages": "hi"}, "messages", "invalid_type"),
    (request("hi"), "messages[0]", "invalid_type"),
    (request({"content": "x"}), "messages[0].role", "missing_required_field"),
    (request({"role": 5, "content": "x"}), "messages[0].role", "invalid_type"),
    (request({"role": "bot", "content": "x"}), "messages[0].role", "invalid_value"),
    (request({"role": "user"}), "messages[0].content", "missing_required_field"),
    (request(user(5)), "messages[0].content", "invalid_type"),
    (request(user(None)), "messages[0].content", "invalid_type"),
    (request(user("a"), parts("x")), "messages[1].content[0]", "invalid_type"),
    (request(parts({"type": "text"})), "messages[0].content[0].text", "missing_required_field"),
    (request(parts({"type": "text", "text": 1})), "messages[0].content[0].text", "invalid_type"),
    (request(parts({"text": "x"})), "messages[0].content[0].type", "missing_required_field"),
    (request(parts({"type": "video"})), "messages[0].content[0].type", "invalid_value"),
    (request(parts({"type": ["text"]})), "messages[0].content[0].type", "invalid_type"),
    (
        request(parts({"type": "image_url"})),
        "messages[0].content[0].image_url",
        "missing_required_field",
    ),
    (
        request(parts({"type": "image_url", "image_url": 5})),
        "messages[0].content[0].image_url",
        "invalid_type",
    ),
    (
        request(parts({"type": "image_url", "image_url": {}})),
        "messages[0].content[0].image_url.url",
        "missing_required_field",
    ),
    (
        request(parts({"type": "image_url", "image_url": {"url": "x", "detail": "ultra"}})),
        "messages[0].content[0].image_url.detail",
        "invalid_value",
    ),
    (
        request(parts({"type": "file", "file_url": {}})),
        "messages[0].content[0].file_url.url",
        "missing_required_field",
    ),
    (
        request(parts({"type": "file", "file_url": None})),
        "messages[0].content[0].file_url",
        "invalid_type",
    ),
    (request(parts({"type": "file"})), "messages[0].content[0].file", "missing_required_field"),
    (
        request(parts({"type": "file", "file": {}})),
        "messages[0].content[0].file.file_data",
        "missing_required_field",
    ),
    (
        request(parts({"type": "file", "file": {"file_id": "file-abc"}})),
        "messages[0].content[0].file.file_id",
        "unsupported_value",
    ),
    (
        request(parts({"type": "file", "file": {"file_data": 5}})),
        "messages[0].content[0].file.file_data",
        "invalid_type",
    ),
    (
        request(parts({"type": "file", "file": {"file_data": "x", "filename": 5}})),
        "messages[0].content[0].file.filename",
        "invalid_type",
    ),
    (
        request(parts({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}})),
        "messages[0].content[0]",
        "unsupported_value",
    ),
    (
        request({"role": "system", "content": [{"type": "image_url", "image_url": "x"}]}),
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (request({"role": "developer", "content": 1}), "messages[0].content", "invalid_type"),
    (request({"role": "system", "content": "x", "name": 1}), "messages[0].name", "invalid_type"),
    (request({"role": "assistant", "content": 5}), "messages[0].content", "invalid_type"),
    (
        request({"role": "assistant", "content": [{"type": "refusal"}]}),
        "messages[0].content[0].refusal",
        "missing_required_field",
    ),
    (
        request({"role": "assistant", "content": [{"type": "image_url", "image_url": "x"}]}),
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        request(
            {
                "role": "assistant",
                "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f"}}],
            }
        ),
        "messages[0].tool_calls[0].function.arguments",
        "missing_required_field",
    ),
    (
        request(
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "1", "type": "custom", "function": {"name": "f", "arguments": ""}}
                ],
            }
        ),
        "messages[0].tool_calls[0].type",
        "invalid_value",
    ),
    (
        request({"role": "assistant", "function_call": {}}),
        "messages[0].function_call.name",
        "missing_required_field",
    ),
    (request({"role": "assistant", "refusal": 1}), "messages[0].refusal", "invalid_type"),
    (
        request({"role": "tool", "content": "42"}),
        "messages[0].tool_call_id",
        "missing_required_field",
    ),
    (request({"role": "function", "content": "42"}), "messages[0].name", "missing_required_field"),
    (request(stream="yes"), "stream", "invalid_type"),
    (request(stream_options=[]), "stream_options", "invalid_type"),
    (
        request(stream_options={"include_usage": "y"}),
        "stream_options.include_usage",
        "invalid_type",
    ),
    (request(temperature=3), "temperature", "invalid_value"),
    (request(temperature="1"), "temperature", "invalid_type"),
    (request(temperature=True), "temperature", "invalid_type"),
    (request(top_p=-0.1), "top_p", "invalid_value"),
    (request(n=2), "n", "unsupported_value"),
    (request(n=2.0), "n", "unsupported_value"),
    (request(n=0), "n", "invalid_value"),
    (request(n=1.5), "n", "invalid_type"),
    (request(max_tokens="10"), "max_tokens", "invalid_type"),
    (request(max_completion_tokens=True), "max_completion_tokens", "invalid_type"),
    (request(stop=["a"] * 5), "stop", "invalid_value"),
    (request(stop=[1]), "stop[0]", "invalid_type"),
    (request(stop=5), "stop", "invalid_type"),
    (request(presence_penalty=2.5), "presence_penalty", "invalid_value"),
    (request(frequency_penalty=-3), "frequency_penalty", "invalid_value"),
    (request(logit_bias={"50256": "x"}), "logit_bias.50256", "invalid_type"),
    (request(logprobs=1), "logprobs", "invalid_type"),
    (request(top_logprobs=21), "top_logprobs", "invalid_value"),
    (request(user=5), "user", "invalid_type"),
    (request(max_tokens=-1), "max_tokens", "invalid_value"),
    (request(max_tokens=0), "max_tokens", "invalid_value"),
    (request(max_completion_tokens=-5), "max_completion_tokens", "invalid_value"),
    (request(functions=[]), "functions", "invalid_value"),
    (request(functions=[{"description": "d"}]), "functions[0].name", "missing_required_field"),
    (request(function_call="always"), "function_call", "invalid_value"),
    (request(function_call={}), "function_call.name", "missing_required_field"),
    (
        request(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        "missing_required_field",
    ),
    (request(seed=0.5), "seed", "invalid_type"),
    (request(tools={}), "tools", "invalid_type"),
    (
        request(tools=[{"type": "function", "function": {}}]),
        "tools[0].function.name",
        "missing_required_field",
    ),
    (
        request(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
        "tools[0].function.parameters",
        "invalid_type",
    ),
    (request(tool_choice="maybe"), "tool_choice", "invalid_value"),
    (request(tool_choice={"type": "function"}), "tool_choice.function", "missing_required_field"),
    (request(tool_choice=5), "tool_choice", "invalid_type"),
    (request(parallel_tool_calls="no"), "parallel_tool_calls", "invalid_type"),
    (request(response_format={"type": "xml"}), "response_format.type", "invalid_value"),
    (
        request(response_format={"type": "json_schema", "json_schema": "x"}),
        "response_format.json_schema",
        "invalid_type",
    ),
    (
        request(response_format={"type": "json_schema"}),
        "response_format.json_schema",
        "missing_required_field",
    ),
    (request(reasoning_effort="extreme"), "reasoning_effort", "invalid_value"),
    (request(modalities=["video"]), "modalities[0]", "invalid_value"),
    (request(metadata={"a": 1}), "metadata.a", "invalid_type"),
    (request(store="no"), "store", "invalid_type"),
    (request(service_tier=1), "service_tier", "invalid_type"),
    (request(conversation_id=5), "conversation_id", "invalid_type"),
    (request(use_search="true"), "use_search", "invalid_type"),
]


#: fields OpenAI refuses below 1 although its schema does not say so
BELOW_MINIMUM = frozenset({"max_tokens", "max_completion_tokens"})


@pytest.mark.parametrize(("body", "param", "code"), INVALID)
def test_invalid_requests_name_the_field(body, param, code):
    with pytest.raises(LocalProtocolError) as info:
        plan_chat(body)
    error = info.value
    assert (error.param, error.code, error.status) == (param, code, 400)
    assert error.type == "invalid_request_error"
    if param:
        assert param in error.message
    assert_valid_error_body(error.to_openai())
    # our schema agrees, except where we refuse on purpose what Kimi cannot do, and where OpenAI
    # checks more than its schema says (a token limit below 1)
    if code == "unsupported_value":
        assert not schema_errors("openai.request.accepted", body)
    elif param not in BELOW_MINIMUM:
        assert schema_errors("openai.request.accepted", body)


def assert_valid_error_body(body):
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert_valid("openai.error", body)


VALID = [
    request(),
    request(user("x"), stream=None, stream_options=None, temperature=None, n=None, top_p=None),
    request(n=1, temperature=0, top_p=1.0, max_tokens=10, max_completion_tokens=1.0, seed=-5),
    request(stop="END", presence_penalty=-2, frequency_penalty=2.0, logit_bias={"1": -100}),
    request(stop=["a", "b", "c", "d"], logprobs=False, top_logprobs=0, user="u-1"),
    request(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}, "strict": None}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=True,
        response_format={"type": "json_schema", "json_schema": {"name": "x"}},
    ),
    request(tool_choice="auto", reasoning_effort=None, modalities=["text"], metadata={"k": "v"}),
    request(store=None, service_tier="auto", conversation_id=None, use_search=None),
    request(a_field_we_do_not_know={"at": "all"}, stream_options={"include_obfuscation": False}),
    request(
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}], "name": "d"},
        {"role": "system", "content": "sys"},
        user("q"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
            "reasoning_content": "clients replay this",
        },
        {"role": "tool", "content": [{"type": "text", "text": "42"}], "tool_call_id": "c1"},
        {"role": "function", "content": None, "name": "f"},
        {"role": "assistant", "function_call": None, "refusal": None},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "no"}],
            "function_call": {"name": "f", "arguments": "{}"},
        },
        parts(
            {"type": "text", "text": "look", "extra": 1},
            {"type": "image_url", "image_url": "https://example.com/a.png"},
            {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
            {"type": "file", "file_url": {"url": "https://example.com/a.pdf"}, "file": 5},
            {"type": "file", "file": {"file_data": PDF_B64, "filename": "a.pdf"}},
            {"type": "file", "file": {"file_data": PDF_B64, "file_id": "file-ignored"}},
        ),
    ),
]


def lenient(body):
    """Uses a form we accept though the official schema does not (schemas/openai/README.md): an
    `image_url` given as a bare string, or a `file` part carrying `file_url`."""
    return any(
        isinstance(part.get("image_url"), str) or "file_url" in part
        for message in body["messages"]
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


@pytest.mark.parametrize("body", VALID)
def test_valid_requests_pass_both_validators(body):
    assert not schema_errors("openai.request.accepted", body)
    # and the official schema, but for the lenient forms we accept on purpose
    assert lenient(body) or not schema_errors("openai.request", body)
    validate_request(body)
    plan = plan_chat(body)
    assert isinstance(plan, ChatPlan)
    assert_valid(
        "kimi.completion_request", completion_call(CONV, prompt=plan.prompt, flags=plan.flags).json
    )


def test_request_is_not_mutated():
    body = VALID[-1]
    before = copy.deepcopy(body)
    plan_chat(body)
    assert body == before


@pytest.mark.parametrize("good", ["a", CONV, "A-b_9", "x" * 64])
def test_safe_conversation_ids(good):
    assert check_conversation_id(good, "conversation_id") == good


# --- URL wrapping --------------------------------------------------------------------------------

WRAP = [
    ("no links here", "no links here"),
    ("see https://a.com/x?y=1.", f"see {wrapped('https://a.com/x?y=1')}."),
    ("HTTP://A.COM", wrapped("HTTP://A.COM")),
    ("a http://x.cn b https://y.cn", f"a {wrapped('http://x.cn')} b {wrapped('https://y.cn')}"),
    ("看https://a.cn的内容", f"看{wrapped('https://a.cn')}的内容"),
    (
        "(https://en.wikipedia.org/wiki/Foo_(bar))",
        f"({wrapped('https://en.wikipedia.org/wiki/Foo_(bar)')})",
    ),
    ("(see https://a.com)", f"(see {wrapped('https://a.com')})"),
    ("'https://a.com/'", f"'{wrapped('https://a.com/')}'"),
    ("line\nhttps://a.com\n", f"line\n{wrapped('https://a.com')}\n"),
    ("http://.", "http://."),
    ("http://", "http://"),
    ("ftp://a.com", "ftp://a.com"),
    (wrapped("https://a.com"), wrapped("https://a.com")),
    (
        f"{wrapped('https://a.com')} and https://b.com",
        f"{wrapped('https://a.com')} and {wrapped('https://b.com')}",
    ),
]


@pytest.mark.parametrize(("text", "expected"), WRAP)
def test_wrap_urls(text, expected):
    assert wrap_urls(text) == expected


@given(
    st.lists(
        st.one_of(
            st.text(max_size=8),
            st.sampled_from(["https://a.com/x", "http://b.cn/(y)", "(", ")", ".", " ", "<url>"]),
        ),
        max_size=8,
    ).map("".join)
)
def test_wrap_urls_is_idempotent(text):
    once = wrap_urls(text)
    assert wrap_urls(once) == once


# --- flattening ---------------------------------------------------------------------------------


def msg(role, text, files=()):
    return Message(role=role, text=text, files=files)


def test_flatten_nothing():
    assert flatten_messages([]) == ""


def test_flatten_one_message_passes_its_text():
    assert flatten_messages([msg("user", "read https://a.com")]) == (
        f"read {wrapped('https://a.com')}"
    )
    assert flatten_messages([msg("system", "https://a.com")]) == "https://a.com"


def test_flatten_multi_turn_golden():
    messages = [
        msg("system", "You are terse. https://sys.example"),
        msg("user", "What is at https://a.com?"),
        msg("assistant", "It is https://a.com, a site."),
        msg("user", "And line\ntwo"),
    ]
    assert flatten_messages(messages) == "\n".join(
        [
            "system:You are terse. https://sys.example",
            f"user:What is at {wrapped('https://a.com')}?",
            "assistant:It is https://a.com, a site.",
            LATEST_HINT,
            "user:And line\ntwo",
        ]
    )


def test_flatten_hint_mentions_files_when_the_last_message_has_files():
    image = UrlFile(url="https://a.com/c.png", kind_hint="image", param="p")
    messages = [
        msg("user", "first", (image,)),
        msg("assistant", "ok"),
        msg("user", "this", (image,)),
    ]
    assert flatten_messages(messages) == "\n".join(
        ["user:first", "assistant:ok", LATEST_FILES_HINT, "user:this"]
    )
    assert LATEST_HINT.startswith("system:")
    assert LATEST_FILES_HINT.startswith("system:")
    # files earlier in the history do not change the hint
    assert LATEST_HINT in flatten_messages([msg("user", "a", (image,)), msg("user", "b")])


# --- normalising and files ----------------------------------------------------------------------


def test_normalise_text_and_parts():
    messages = normalise_messages(
        [
            {
                "role": "system",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            {"role": "function", "content": None, "name": "f"},
            user("plain"),
        ]
    )
    assert messages == (
        msg("system", "a\nb"),
        msg("assistant", ""),
        msg("assistant", "no"),
        msg("function", '<tool_result name="f">\n\n</tool_result>'),
        msg("user", "plain"),
    )


def test_files_from_every_user_message_in_order():
    plan = plan_chat(
        request(
            parts(
                {"type": "text", "text": "one"},
                {"type": "image_url", "image_url": "https://a.com/1.png"},
            ),
            {"role": "assistant", "content": "ok"},
            parts(
                {"type": "image_url", "image_url": {"url": PNG_URL}},
                {"type": "file", "file_url": {"url": "http://a.com/2.pdf"}},
                {"type": "file", "file": {"file_data": PDF_B64, "filename": "dir/../r.pdf"}},
                {"type": "file", "file": {"file_data": "data:text/csv,a%2Cb", "filename": ""}},
                {"type": "text", "text": "two"},
            ),
        )
    )
    assert plan.files == (
        UrlFile(
            url="https://a.com/1.png", kind_hint="image", param="messages[0].content[1].image_url"
        ),
        InlineFile(
            data=PNG,
            mime_type="image/png",
            name=hashlib.sha256(PNG).hexdigest()[:16] + ".png",
            kind_hint="image",
            param="messages[2].content[0].image_url.url",
        ),
        UrlFile(
            url="http://a.com/2.pdf", kind_hint="file", param="messages[2].content[1].file_url.url"
        ),
        InlineFile(
            data=PDF,
            mime_type="application/pdf",
            name="r.pdf",
            kind_hint="file",
            param="messages[2].content[2].file.file_data",
        ),
        InlineFile(
            data=b"a,b",
            mime_type="text/csv",
            name=hashlib.sha256(b"a,b").hexdigest()[:16] + ".csv",
            kind_hint="file",
            param="messages[2].content[3].file.file_data",
        ),
    )
    assert plan.messages[2].text == "two"
    assert plan.prompt == "\n".join(["user:one", "assistant:ok", LATEST_FILES_HINT, "user:two"])


def test_the_bytes_decide_image_or_file():
    # a PDF sent as an "image" is uploaded as a file; a PNG sent as a file is an image
    plan = plan_chat(
        request(
            parts(
                {"type": "image_url", "image_url": f"data:image/png;base64,{PDF_B64}"},
                {"type": "file", "file": {"file_data": PNG_URL, "filename": "notes.txt"}},
            )
        )
    )
    assert all(isinstance(f, InlineFile) for f in plan.files)
    assert [(f.kind_hint, f.mime_type) for f in plan.files if isinstance(f, InlineFile)] == [
        ("file", "application/pdf"),
        ("image", "image/png"),
    ]


@pytest.mark.parametrize(
    ("part", "param", "fragment"),
    [
        (
            {"type": "image_url", "image_url": "ftp://a.com/x.png"},
            "messages[0].content[0].image_url",
            "'ftp'",
        ),
        (
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}},
            "messages[0].content[0].image_url.url",
            "'file'",
        ),
        (
            {"type": "file", "file_url": {"url": "/etc/passwd"}},
            "messages[0].content[0].file_url.url",
            "'/etc/passwd'",
        ),
        (
            {"type": "image_url", "image_url": "data:image/png;base64,@@@"},
            "messages[0].content[0].image_url",
            "invalid data URL",
        ),
        (
            {"type": "file", "file": {"file_data": "not base64!"}},
            "messages[0].content[0].file.file_data",
            "invalid data URL",
        ),
        (
            {"type": "file", "file": {"file_data": ""}},
            "messages[0].content[0].file.file_data",
            "empty",
        ),
    ],
)
def test_unreadable_files_name_the_part(part, param, fragment):
    with pytest.raises(LocalProtocolError) as info:
        plan_chat(request(parts(part)))
    assert info.value.param == param
    assert info.value.code == "invalid_value"
    assert fragment in info.value.message


# --- plan_chat ----------------------------------------------------------------------------------


def test_plan_single_message():
    plan = plan_chat(request(user("hello https://a.com"), model="kimi-search-silent"))
    assert plan == ChatPlan(
        model="kimi-search-silent",
        flags=resolve_model("kimi-search-silent"),
        prompt=f"hello {wrapped('https://a.com')}",
        files=(),
        messages=(msg("user", "hello https://a.com"),),
    )


@pytest.mark.parametrize(
    ("fields", "stream", "include_usage"),
    [
        ({}, False, False),
        ({"stream": True}, True, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True, True),
        ({"stream": True, "stream_options": {"include_usage": False}}, True, False),
        ({"stream": False, "stream_options": {"include_usage": True}}, False, False),
        ({"stream": None, "stream_options": None}, False, False),
    ],
)
def test_plan_stream_flags(fields, stream, include_usage):
    plan = plan_chat(request(**fields))
    assert (plan.stream, plan.include_usage) == (stream, include_usage)


def test_plan_flags_from_model_and_fields():
    plan = plan_chat(request(model="kimi-k2.6", use_search=True, reasoning_effort="high"))
    assert plan.flags == resolve_model("kimi-k2.6", use_search=True, reasoning_effort="high")
    assert plan.flags.use_search
    assert plan.flags.thinking
    assert plan_chat(request(use_search=False)).flags.use_search is False


def test_plan_with_conversation_id_sends_only_the_new_turn():
    history = [
        parts(
            {"type": "text", "text": "old"},
            {"type": "image_url", "image_url": "https://a.com/old.png"},
        ),
        {"role": "assistant", "content": "answer"},
        parts(
            {"type": "text", "text": "new https://b.com"},
            {"type": "image_url", "image_url": "https://a.com/new.png"},
        ),
        {"role": "system", "content": "trailing system note"},
    ]
    plan = plan_chat(request(*history, conversation_id=CONV))
    assert plan.conversation_id == CONV
    assert plan.prompt == f"new {wrapped('https://b.com')}"
    assert plan.files == (
        UrlFile(
            url="https://a.com/new.png", kind_hint="image", param="messages[2].content[1].image_url"
        ),
    )
    assert len(plan.messages) == 4


def test_plan_with_conversation_id_sends_tool_results_as_the_new_turn():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tools = [{"type": "function", "function": {"name": "f"}}]
    only_results = plan_chat(
        request(
            user("old"),
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "result"},
            conversation_id=CONV,
            tools=tools,
        )
    )
    assert '<tool_result name="f" call_id="c1">\nresult\n</tool_result>' in only_results.prompt
    assert "old" not in only_results.prompt
    with_user = plan_chat(
        request(
            {"role": "tool", "tool_call_id": "c1", "content": "result"},
            {"role": "system", "content": "note"},
            parts(
                {"type": "text", "text": "and now?"},
                {"type": "image_url", "image_url": "https://a.com/x.png"},
            ),
            conversation_id=CONV,
            tools=tools,
        )
    )
    assert "note" not in with_user.prompt
    assert "and now?" in with_user.prompt
    assert [f.param for f in with_user.files] == ["messages[2].content[1].image_url"]


def test_plan_empty_conversation_id_is_absent():
    plan = plan_chat(request(user("a"), {"role": "assistant", "content": "b"}, conversation_id=""))
    assert plan.conversation_id is None
    assert plan.prompt == "\n".join(["user:a", LATEST_HINT, "assistant:b"])


@pytest.mark.parametrize("bad", ["../../api/user", "a/b", "x" * 65, "a b", "中"])
def test_plan_refuses_unsafe_conversation_ids(bad):
    with pytest.raises(LocalProtocolError) as info:
        plan_chat(request(conversation_id=bad))
    assert (info.value.param, info.value.code) == ("conversation_id", "invalid_value")


def test_plan_with_conversation_id_needs_a_user_message():
    with pytest.raises(LocalProtocolError) as info:
        plan_chat(request({"role": "system", "content": "s"}, conversation_id=CONV))
    assert (info.value.param, info.value.code) == ("messages", "missing_required_field")


def test_non_json_values_are_named_by_their_python_type():
    # plan_chat is given parsed JSON, but a caller's bug should still give a clear message
    with pytest.raises(LocalProtocolError) as info:
        validate_request({"model": b"kimi", "messages": [user("x")]})
    assert info.value.message == "model: expected string, got bytes"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "tool", "tool_call_id": "c1", "content": "result"}],
        [user("q"), {"role": "tool", "tool_call_id": "c1", "content": "result"}],
        [
            user("q"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "result"},
        ],
    ],
)
def test_a_tool_result_without_its_call_is_refused(messages):
    # as OpenAI does: the model would read the result of a call it never made
    with pytest.raises(LocalProtocolError) as info:
        plan_chat(request(*messages))
    param = f"messages[{len(messages) - 1}].tool_call_id"
    assert (info.value.param, info.value.code, info.value.status) == (param, "invalid_value", 400)
    assert info.value.message.startswith(param + ": 'c1' answers no tool call")
    assert_valid_error_body(info.value.to_openai())
    # with conversation_id the call may live only in Kimi's copy of the conversation
    assert plan_chat(request(*messages, conversation_id=CONV)).conversation_id == CONV


@pytest.mark.parametrize("name", ["", 'say "hi"', "a<b", "a>b", "two\nlines"])
def test_a_tool_name_the_call_markup_cannot_carry_is_refused(name):
    # the model could never call it (<tool_call name="..."> ends at the quote or the bracket):
    # refused before a Kimi turn and a repair are spent on it
    for body, param in (
        (request(tools=[{"type": "function", "function": {"name": name}}]), "tools[0].function"),
        (request(functions=[{"name": "ok"}, {"name": name}]), "functions[1]"),
    ):
        with pytest.raises(LocalProtocolError) as info:
            plan_chat(body)
        assert (info.value.param, info.value.code) == (f"{param}.name", "invalid_value")
        assert info.value.message.startswith(f"{param}.name: ")
    # names the markup carries pass, with spaces, dots, dashes and any script
    for name in ("get_weather", "ns.tool", "a b", "mcp__srv__read-file", "天气"):
        plan_chat(request(tools=[{"type": "function", "function": {"name": name}}]))
