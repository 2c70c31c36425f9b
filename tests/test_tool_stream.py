"""Tool calls, JSON output, stop and max_tokens in the answer stream (translator side): the parser,
the validation, the chunks, the repair turn, and the early cut. Every chunk is schema-checked by
`tests.tool_streams.run`."""

from __future__ import annotations

import json

import pytest

from tests.tool_streams import connect_body, legacy_body, request, run
from translator import plan_chat
from translator.tools._calls import CallProblem, ToolCall, decode_json_value, validate_call
from translator.tools._parser import RawCall, ToolCallParser
from translator.tools._prompt import REPAIR_LEAD
from translator.tools._shaper import AnswerShaper

GOOD = '<tool_call name="get_weather">\n{"city": "Paris"}\n</tool_call>'
PARIS = '{"city": "Paris"}'
BODIES = {"legacy": legacy_body, "connect": connect_body}


def parse(*pieces: str) -> list[str | RawCall]:
    parser = ToolCallParser()
    out: list[str | RawCall] = []
    for piece in pieces:
        out += parser.feed(piece)
    out += parser.close()
    merged: list[str | RawCall] = []
    for item in out:
        if isinstance(item, str) and merged and isinstance(merged[-1], str):
            merged[-1] += item
        else:
            merged.append(item)
    return merged


# --- the parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", ["plain text"]),
        ("a <b> c", ["a <b> c"]),
        (GOOD, [RawCall("get_weather", PARIS, "ours")]),
        (
            f"Let me check.\n{GOOD}\ntrailing",
            ["Let me check.\n", RawCall("get_weather", PARIS, "ours"), "\ntrailing"],
        ),
        ("<tool_call name='q'>{}</tool_call>", [RawCall("q", "{}", "ours")]),
        ("<tool_call id=1 name=q >{}</tool_call >", [RawCall("q", "{}", "ours")]),
        (
            '<tool_call>{"name": "q", "arguments": {}}</tool_call>',
            [RawCall(None, '{"name": "q", "arguments": {}}', "hermes")],
        ),
        (
            '<tool_call name="a">{}<tool_call name="b">{}</tool_call>',
            [RawCall("a", "{}", "ours"), RawCall("b", "{}", "ours")],
        ),
        ('<tool_call name="a">\n{"x": 1}', [RawCall("a", '{"x": 1}', "ours")]),
        (
            "Sure.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
            '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
            "<|tool_call_begin|>get_time:1<|tool_call_argument_begin|>{}<|tool_call_end|>"
            "<|tool_calls_section_end|> after",
            [
                "Sure.",
                RawCall("get_weather", PARIS, "kimi"),
                RawCall("get_time", "{}", "kimi"),
                " after",
            ],
        ),
        (
            '<|tool_call_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{"a"',
            [RawCall("f", '{"a"', "kimi")],
        ),
        (
            "<|tool_call_begin|>f<|tool_call_argument_begin|>{}<|tool_call_end|>x",
            [RawCall("f", "{}", "kimi"), "x"],
        ),
        # examples, not calls
        (f"```\n{GOOD}\n```\nok", [f"```\n{GOOD}\n```\nok"]),
        ('say `<tool_call name="a">` now', ['say `<tool_call name="a">` now']),
        (
            '``a`` then `b` <tool_call name="a">{}</tool_call>',
            ["``a`` then `b` ", RawCall("a", "{}", "ours")],
        ),
        ("`open\n" + GOOD, ["`open\n", RawCall("get_weather", PARIS, "ours")]),
        (
            "x ``` not a fence\n" + GOOD,
            ["x ``` not a fence\n", RawCall("get_weather", PARIS, "ours")],
        ),
        ("```\n`x` " + GOOD + "\n```", ["```\n`x` " + GOOD + "\n```"]),
        ("``a`b`` " + GOOD, ["``a`b`` ", RawCall("get_weather", PARIS, "ours")]),
        # near misses stay text
        ("a <tool_calls> b", ["a <tool_calls> b"]),
        ("a <tool_call", ["a <tool_call"]),
        ("a <tool_c", ["a <tool_c"]),
        ("a <|tool_call", ["a <|tool_call"]),
        ("a <tool_call " + "x" * 300, ["a <tool_call " + "x" * 300]),
        ("<tool_call name=", ["<tool_call name="]),
        ("<|tool_calls_section_begin|>no items", []),
    ],
)
def test_parser(text, expected):
    assert parse(text) == expected
    for size in (1, 2, 3, 7):
        assert parse(*[text[i : i + size] for i in range(0, len(text), size)]) == expected


def test_parser_holds_back_only_a_possible_marker_start():
    parser = ToolCallParser()
    assert parser.feed("") == []
    assert parser.feed("Hello <tool") == ["Hello "]
    assert parser.feed("s> are") == ["<tools> are"]
    assert parser.feed(" fine `x` ") == [" fine `x` "]
    assert parser.feed('<tool_call name="a"') == []
    assert parser.feed(">{}</tool_call>") == [RawCall("a", "{}", "ours")]
    assert parser.close() == []
    unfinished = ToolCallParser()
    assert unfinished.feed("x <tool_call") == ["x "]
    assert unfinished.close() == ["<tool_call"]
    # a long opening tag that never ends is text
    long = ToolCallParser()
    assert long.feed("<tool_call ") == []
    assert long.feed("y" * 300) == ["<tool_call " + "y" * 300]


# --- validation ---------------------------------------------------------------------------------

SPECS = {t.name: t for t in plan_chat(request()).tools}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (RawCall("get_weather", PARIS, "ours"), ToolCall("get_weather", PARIS)),
        (
            RawCall("get_weather", '```json\n{"city": "Paris"}\n```', "ours"),
            ToolCall("get_weather", PARIS),
        ),
        (RawCall("get_weather", json.dumps(PARIS), "ours"), ToolCall("get_weather", PARIS)),
        (RawCall("get_time", "", "ours"), ToolCall("get_time", "{}")),
        (
            RawCall(None, '{"name": "get_time", "parameters": {"z": "é"}}', "hermes"),
            ToolCall("get_time", '{"z": "é"}'),
        ),
        (RawCall(None, '{"name": "get_time"}', "hermes"), ToolCall("get_time", "{}")),
        (
            RawCall(None, "not json", "hermes"),
            CallProblem('the <tool_call> block must name the tool: <tool_call name="…">'),
        ),
        (
            RawCall(None, "[1]", "hermes"),
            CallProblem('the <tool_call> block must name the tool: <tool_call name="…">'),
        ),
        (
            RawCall("nope", "{}", "ours"),
            CallProblem("there is no tool named 'nope'; the tools are: get_weather, get_time"),
        ),
        (RawCall("get_weather", "{oops", "ours"), None),
        (
            RawCall("get_weather", '"not json"', "ours"),
            CallProblem("the arguments of get_weather must be a JSON object, not a string"),
        ),
        (
            RawCall("get_weather", "[1]", "ours"),
            CallProblem("the arguments of get_weather must be a JSON object"),
        ),
        (
            RawCall("get_weather", '{"city": 5}', "ours"),
            CallProblem(
                "the arguments of get_weather do not match its parameters: "
                "city: 5 is not of type 'string'"
            ),
        ),
    ],
)
def test_validate_call(raw, expected):
    result = validate_call(raw, SPECS)
    if expected is None:
        assert isinstance(result, CallProblem)
        assert result.message.startswith("the arguments of get_weather are not valid JSON")
    else:
        assert result == expected
    assert validate_call(RawCall("x", "{}", "ours"), {}) == CallProblem(
        "there is no tool named 'x'; the tools are: none"
    )


def test_decode_json_value_skips_fences_and_what_follows():
    assert decode_json_value(' ```\n{"a": 1}\n``` ') == {"a": 1}
    assert decode_json_value('{"a": 1} and more') == {"a": 1}
    with pytest.raises(ValueError, match="Expecting value"):
        decode_json_value("nothing")


# --- answers with calls -------------------------------------------------------------------------


def calls_of(result):
    return [
        (c["function"]["name"], c["function"]["arguments"])
        for c in result.folded()["choices"][0]["message"].get("tool_calls") or ()
    ]


@pytest.mark.parametrize("dialect", ["legacy", "connect"])
def test_text_then_call_streams_the_text_and_folds_the_call(dialect):
    answer = [
        "Let me check.\n<tool_",
        'call name="get_weather">\n{"city": "Pa',
        'ris"}\n</tool_call>',
        "\n<tool_result>fake</tool_result>",
    ]
    result = run(request(), [BODIES[dialect](answer)], dialect=dialect)
    assert result.error is None
    assert result.content == "Let me check.\n"
    assert result.finish == "tool_calls"
    deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in result.chunks
        if c.get("choices") and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert deltas[0]["id"].startswith("call_")
    assert len(deltas[0]["id"]) == 29
    assert deltas[0]["type"] == "function"
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert "".join(d["function"]["arguments"] for d in deltas) == PARIS
    assert calls_of(result) == [("get_weather", PARIS)]
    message = result.folded()["choices"][0]["message"]
    assert message["content"] == "Let me check.\n"
    assert result.translator.answer_text == "Let me check.\n\n" + GOOD
    usage = result.chunks[-1]["usage"]
    assert usage["completion_tokens"] == 8  # 14 + 17 ASCII characters of content + arguments


def test_only_calls_fold_to_null_content_and_long_arguments_come_in_pieces():
    long = json.dumps({"city": "x" * 600})
    result = run(
        request(), [legacy_body([f'<tool_call name="get_weather">{long}</tool_call>', GOOD])]
    )
    message = result.folded()["choices"][0]["message"]
    assert message["content"] is None
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == [long, PARIS]
    ids = [c["id"] for c in message["tool_calls"]]
    assert len(set(ids)) == 2
    pieces = [
        c for c in result.chunks if c.get("choices") and c["choices"][0]["delta"].get("tool_calls")
    ]
    assert len(pieces) == 2 + 3 + 1  # two heads, 3 pieces of the long arguments, 1 of the short
    # ids are deterministic
    again = run(
        request(), [legacy_body([f'<tool_call name="get_weather">{long}</tool_call>', GOOD])]
    )
    assert [c["id"] for c in again.folded()["choices"][0]["message"]["tool_calls"]] == ids


def test_parallel_false_keeps_the_first_call():
    result = run(
        request(parallel_tool_calls=False),
        [legacy_body([GOOD, '<tool_call name="get_time">{}</tool_call>'])],
    )
    assert calls_of(result) == [("get_weather", PARIS)]


@pytest.mark.parametrize("markup", ["kimi", "hermes", "unclosed", "string"])
def test_drifted_markups_become_calls(markup):
    answer = {
        "kimi": "x<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>',
        "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
        "\n</tool_call>",
        "unclosed": '<tool_call name="get_weather">\n{"city": "Paris"}',
        "string": '<tool_call name="get_weather">"{\\"city\\": \\"Paris\\"}"</tool_call>',
    }[markup]
    result = run(
        request(),
        [connect_body([answer[i : i + 5] for i in range(0, len(answer), 5)])],
        dialect="connect",
    )
    assert calls_of(result) == [("get_weather", PARIS)]
    assert "<" not in result.content


def test_a_fenced_call_is_text():
    answer = f"Example:\n```\n{GOOD}\n```\n"
    result = run(request(), [legacy_body([answer])])
    assert result.content == answer
    assert result.finish == "stop"


# --- repair --------------------------------------------------------------------------------------

BAD = '<tool_call name="get_weather">{"city": 5}</tool_call>'


@pytest.mark.parametrize("dialect", ["legacy", "connect"])
def test_one_invisible_repair_turn(dialect):
    body = BODIES[dialect]
    result = run(request(), [body(["Checking. ", BAD]), body(["Sorry! ", GOOD])], dialect=dialect)
    assert len(result.repairs) == 1
    assert result.repairs[0].startswith(REPAIR_LEAD + " the arguments of get_weather")
    assert result.content == "Checking. "  # the repair's prose is not shown
    assert calls_of(result) == [("get_weather", PARIS)]
    assert result.translator.event_counts["repair"] == 1


@pytest.mark.parametrize(
    ("choice", "content", "error"),
    [
        ("auto", "Checking. ", None),
        ("required", None, "the model's tool call is invalid"),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            "the model's tool call is invalid",
        ),
    ],
)
def test_when_the_repair_fails_too(choice, content, error):
    result = run(
        request(tool_choice=choice), [legacy_body(["Checking. ", BAD]), legacy_body([BAD])]
    )
    if error is None:
        assert result.error is None
        assert (result.content, result.finish) == (content, "stop")
        assert calls_of(result) == []
    else:
        assert result.error.status == 502
        assert result.error.code == "invalid_model_output"
        assert result.error.message.startswith(error)


def test_auto_takes_the_repair_answer_text_when_it_calls_nothing():
    result = run(request(), [legacy_body([BAD]), legacy_body(["No tool ", "needed."])])
    assert (result.content, result.finish, calls_of(result)) == ("No tool needed.", "stop", [])
    failed = run(request(), [legacy_body([BAD]), legacy_body([BAD])])
    assert failed.error is not None
    assert failed.error.status == 502
    empty = run(request(), [legacy_body([BAD]), legacy_body(["<|tool_calls_section_begin|>x"])])
    assert empty.error.message == "the model's tool call is invalid"


def test_required_and_named_demand_a_call():
    no_call = legacy_body(["Just words."])
    result = run(request(tool_choice="required"), [no_call, legacy_body([GOOD])])
    assert "it calls no tool, but this reply must call one of the tools" in result.repairs[0]
    assert calls_of(result) == [("get_weather", PARIS)]
    assert result.content == "Just words."
    failed = run(request(tool_choice="required"), [no_call, no_call])
    assert failed.error.message == "the model did not call a tool although tool_choice says it must"
    named = {"type": "function", "function": {"name": "get_time"}}
    wrong = run(
        request(tool_choice=named),
        [legacy_body([GOOD]), legacy_body(['<tool_call name="get_time">{}</tool_call>'])],
    )
    assert "this reply must call 'get_time', not 'get_weather'" in wrong.repairs[0]
    assert calls_of(wrong) == [("get_time", "{}")]
    assert calls_of(run(request(), [no_call])) == []


def test_tool_choice_none_parses_no_call():
    result = run(request(tool_choice="none"), [legacy_body(["Words. ", GOOD])])
    assert (result.content, result.finish, calls_of(result)) == ("Words. ", "stop", [])
    only = run(request(tool_choice="none"), [legacy_body([GOOD])])
    assert only.error.status == 502
    assert only.error.message == "the model called a tool although tool_choice is none"


def test_begin_repair_only_when_one_is_pending():
    result = run(request(), [legacy_body([GOOD])])
    with pytest.raises(RuntimeError):
        result.translator.begin_repair(None)


# --- structured output ---------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
}


@pytest.mark.parametrize("dialect", ["legacy", "connect"])
def test_json_is_extracted_from_prose_and_fences(dialect):
    answer = 'Here you go:\n```json\n{"name": "Ann",\n "age": 3}\n```\nAnything else?'
    result = run(
        request(tools=None, response_format=JSON_SCHEMA),
        [BODIES[dialect]([answer[:9], answer[9:]])],
        dialect=dialect,
    )
    assert result.content == '{"name": "Ann", "age": 3}'
    assert result.finish == "stop"


@pytest.mark.parametrize(
    ("fmt", "bad", "problem"),
    [
        (
            JSON_SCHEMA,
            '{"name": "Ann"}',
            "the JSON does not match the schema: the value: 'age' is a required property",
        ),
        ({"type": "json_object"}, "[1, 2]", "the reply must be a JSON object"),
        ({"type": "json_object"}, '{"a": tru', "the reply does not contain a JSON object"),
        ({"type": "json_object"}, '{"a": 1', "the reply does not contain a JSON object"),
    ],
)
def test_json_gets_one_repair_then_an_error(fmt, bad, problem):
    good = '{"name": "Bo", "age": 4}'
    repaired = run(
        request(tools=None, response_format=fmt), [legacy_body([bad]), legacy_body([good])]
    )
    assert repaired.repairs == [f"{REPAIR_LEAD} {problem}\nReply again with only the JSON object."]
    assert json.loads(repaired.content) == {"name": "Bo", "age": 4}
    failed = run(request(tools=None, response_format=fmt), [legacy_body([bad]), legacy_body([bad])])
    assert failed.error.status == 502
    assert failed.error.message == f"the model's answer is not the JSON asked for: {problem}"


def test_json_object_must_be_an_object():
    result = run(
        request(tools=None, response_format={"type": "json_object"}),
        [legacy_body(['"x"']), legacy_body(["x"])],
    )
    assert result.repairs[0].startswith(REPAIR_LEAD + " the reply must be a JSON object")


def test_tools_and_json_together():
    both = request(response_format=JSON_SCHEMA)
    assert calls_of(run(both, [legacy_body([GOOD])])) == [("get_weather", PARIS)]
    result = run(both, [legacy_body(['{"name": "A", "age": 1}'])])
    assert result.content == '{"name": "A", "age": 1}'


# --- stop and max_tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["legacy", "connect"])
def test_stop_is_split_safe_and_closes_early(dialect):
    deltas = ["Hello wo", "rld. EN", "D and then more text", " and more"]
    body = BODIES[dialect](deltas)
    for size in (1, 3, 17, len(body)):
        result = run(
            request(tools=None, stop=["END", "xyz"]),
            [body],
            dialect=dialect,
            cut=lambda b, s=size: [b[i : i + s] for i in range(0, len(b), s)],
        )
        assert (result.content, result.finish) == ("Hello world. ", "stop")
        assert result.translator.cut
        if size < 20:
            assert result.fed[0] < len(body)  # the rest of Kimi's body was never read


def test_stop_prefixes_are_released_when_no_stop_follows():
    result = run(request(tools=None, stop=["ENDE", "NDX"]), [legacy_body(["abc EN", "D"])])
    assert (result.content, result.finish) == ("abc END", "stop")
    again = run(request(tools=None, stop="ab"), [legacy_body(["xa", "ya", "b", "c"])])
    assert again.content == "xay"


@pytest.mark.parametrize("dialect", ["legacy", "connect"])
def test_max_tokens_cuts_at_the_usage_estimate(dialect):
    result = run(
        request(tools=None, max_tokens=3),
        [BODIES[dialect](["0123456789", "abcdef", "more"])],
        dialect=dialect,
    )
    assert (result.content, result.finish) == ("0123456789ab", "length")
    assert result.chunks[-1]["usage"]["completion_tokens"] == 3
    cjk = run(request(tools=None, max_completion_tokens=2), [legacy_body(["你好世界和平"])])
    assert (cjk.content, cjk.finish) == ("你好世", "length")
    assert cjk.chunks[-1]["usage"]["completion_tokens"] == 2
    fits = run(request(tools=None, max_tokens=100), [legacy_body(["short"])])
    assert (fits.content, fits.finish) == ("short", "stop")


def test_max_tokens_counts_reasoning():
    plan = plan_chat(request(tools=None, max_tokens=1))
    shaper = AnswerShaper.for_plan(plan)
    assert shaper is not None
    assert shaper.reasoning("abcdef") == "abcd"
    assert shaper.cut == "length"
    assert shaper.reasoning("x") == ""
    assert shaper.text("y") == ""


def test_a_plain_plan_has_no_shaper():
    assert AnswerShaper.for_plan(plan_chat(request(tools=None))) is None
    assert AnswerShaper.for_plan(plan_chat(request(tools=None, stop="x"))) is not None


def test_a_stop_string_in_the_last_held_text():
    result = run(request(stop=["<tool"]), [legacy_body(["hi <tool_c"])])
    assert (result.content, result.finish) == ("hi ", "stop")


def test_feed_after_the_cut_reads_nothing():
    from translator.chat._response import ResponseTranslator
    from translator.legacy._stream import LegacyDecoder

    plan = plan_chat(request(tools=None, stop="b"))
    t = ResponseTranslator(
        LegacyDecoder(),
        completion_id="c",
        model="kimi",
        created=1,
        shaper=AnswerShaper.for_plan(plan),
    )
    body = legacy_body(["abc", "def"])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in t.feed(body)) == "a"
    assert t.cut
    assert t.feed(b"data: garbage that is never decoded") == []
    assert [c["choices"][0]["finish_reason"] for c in t.close()] == ["stop"]


def legacy_events(*events):
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)


def test_reasoning_counts_toward_max_tokens_in_a_stream():
    body = legacy_events(
        {"event": "resp", "id": "s"},
        {"event": "k1", "text": "thinking"},
        {"event": "cmpl", "text": "answer text"},
        {"event": "all_done"},
    )
    result = run(request(tools=None, max_tokens=3), [body])
    reasoning = "".join(
        c["choices"][0]["delta"].get("reasoning_content") or ""
        for c in result.chunks
        if c["choices"]
    )
    assert (reasoning, result.content, result.finish) == ("thinking", "answ", "length")


def test_json_after_search_citations_is_set_apart():
    body = legacy_events(
        {"event": "resp", "id": "s"},
        {"event": "search_plus", "msg": {"type": "get_res", "title": "T", "url": "https://e.x/1"}},
        {"event": "cmpl", "text": '{"a": 1}'},
        {"event": "all_done"},
    )
    result = run(request(tools=None, response_format={"type": "json_object"}), [body])
    assert result.content == '1. [T](https://e.x/1)\n\n{"a": 1}'


def test_the_shaped_assembler_counts_and_refuses_like_the_plain_one():
    from translator._errors import RemoteProtocolError
    from translator._upstream import Noise, ReasoningDelta, TextDelta, Unknown
    from translator.chat._assembler import ShapedAssembler, State

    asm = ShapedAssembler(
        completion_id="c",
        fallback_id="f",
        model="kimi",
        created=1,
        silent=False,
        include_usage=False,
        prompt_text="",
        max_continuations=0,
        system_fingerprint=None,
        shaper=AnswerShaper.for_plan(plan_chat(request())),
    )
    asm.handle(Noise(kind="ping"))
    asm.handle(Unknown(kind="zz"))
    assert asm.event_counts == {"Noise:ping": 1, "Unknown:zz": 1}
    asm.handle(ReasoningDelta(text=""))  # nothing to write
    assert asm.drain_parts() == []
    asm.state = State.CLOSED
    with pytest.raises(RemoteProtocolError, match="unexpected TextDelta in state CLOSED"):
        asm.handle(TextDelta(text="x"))
