"""The request side of tools, structured output, stop and max_tokens: ChatPlan fields, the tool
prompt (exact text, shown in translator/tools/_prompt.py's docstring), and the history form."""

from __future__ import annotations

import pytest

import translator.tools._prompt as tool_prompt
from translator import LocalProtocolError, plan_chat
from translator._plan import OutputFormat, ToolSpec
from translator.chat._messages import flatten_messages, normalise_messages
from translator.tools._prompt import (
    assistant_text,
    compose_prompt,
    render_call,
    render_result,
    repair_missing_call_prompt,
)

PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather of a city", "parameters": PARAMS},
}


def request(**extra):
    return {"model": "kimi", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_plan_carries_the_tool_fields():
    plan = plan_chat(
        request(
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            stop=["END", "", "END"],
            max_tokens=9,
            max_completion_tokens=5,
            response_format={"type": "json_object"},
        )
    )
    assert plan.tools == (
        ToolSpec(name="get_weather", description="Weather of a city", parameters=PARAMS),
    )
    assert plan.tool_choice == "get_weather"
    assert plan.parallel_tool_calls is False
    assert plan.stop == ("END",)
    assert plan.max_tokens == 5  # max_completion_tokens wins
    assert plan.response_format == OutputFormat(type="json_object")
    assert plan_chat(request(max_tokens=7.0, stop="x")).max_tokens == 7
    assert plan_chat(request(stop="x")).stop == ("x",)


def test_legacy_functions_map_onto_tools():
    function = WEATHER["function"]
    plan = plan_chat(request(functions=[function], function_call={"name": "get_weather"}))
    assert plan.tools == plan_chat(request(tools=[WEATHER])).tools
    assert plan.tool_choice == "get_weather"
    assert plan_chat(request(functions=[function], function_call="none")).tool_choice == "none"
    # tools win over functions; tool_choice over function_call
    other = {"name": "other"}
    plan = plan_chat(
        request(tools=[WEATHER], functions=[other], tool_choice="required", function_call="none")
    )
    assert [t.name for t in plan.tools] == ["get_weather"]
    assert plan.tool_choice == "required"


def test_null_means_absent():
    nulls = dict.fromkeys(
        [
            "tools",
            "tool_choice",
            "user",
            "response_format",
            "parallel_tool_calls",
            "functions",
            "function_call",
            "stop",
            "max_tokens",
            "max_completion_tokens",
            "seed",
        ]
    )
    plan = plan_chat(request(**nulls))
    assert plan == plan_chat(request())
    assistant = {"role": "assistant", "content": "x", "tool_calls": None, "name": None}
    plan_chat({"model": "kimi", "messages": [assistant, {"role": "user", "content": "y"}]})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (request(tool_choice="required"), "tool_choice"),
        (request(function_call={"name": "f"}), "function_call.name"),
        (
            request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}),
            "tool_choice.function.name",
        ),
        (request(tools=[WEATHER, WEATHER]), "tools[1].function.name"),
        (
            request(
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]
            ),
            "tools[0].function.parameters",
        ),
        (
            request(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "nope"}},
                }
            ),
            "response_format.json_schema.schema",
        ),
        (request(max_tokens=-3), "max_tokens"),
    ],
)
def test_semantic_refusals_name_the_field(body, param):
    with pytest.raises(LocalProtocolError) as info:
        plan_chat(body)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, "invalid_value")


def test_without_tools_the_prompt_is_unchanged():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "see https://a.example/x"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and now?"},
    ]
    expected = flatten_messages(normalise_messages(messages))
    for extra in ({}, {"tools": None, "tool_choice": "auto"}, {"stop": "x", "max_tokens": 3}):
        assert plan_chat({"model": "kimi", "messages": messages, **extra}).prompt == expected
    assert expected == (
        "system:be brief\n"
        'user:see <url id="" type="url" status="" title="" wc="">https://a.example/x</url>\n'
        "assistant:ok\nsystem:请关注用户最新的消息\nuser:and now?"
    )


def test_the_docstring_shows_the_exact_text():
    tool = ToolSpec(
        name="get_weather",
        description="Weather of a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    text = compose_prompt("history", tools=[tool])
    shown = tool_prompt.__doc__.split("::\n\n", 1)[1].split("\n\n(the two", 1)[0]
    shown_lines = [line[4:] for line in shown.splitlines()]
    # the docstring wraps two long lines (continuations start with two spaces) and shortens
    # the parameters with "..."
    joined: list[str] = []
    for line in shown_lines:
        if line.startswith("  ") and joined:
            joined[-1] += " " + line.strip()
        else:
            joined.append(line)
    actual = text.split("\n\n", 1)[1].splitlines()
    assert len(actual) == len(joined)
    for want, got in zip(joined, actual, strict=True):
        head = want.split("...", 1)[0]
        assert got.startswith(head), (want, got)


def test_instructions_follow_the_choice_and_parallel_flag():
    tools = [WEATHER]
    auto = plan_chat(request(tools=tools)).prompt
    assert auto.startswith("hi\n\n<tool_instructions>\n")
    assert auto.endswith("without any <tool_call>.\n</tool_instructions>")
    assert "one block per call" in auto
    single = plan_chat(request(tools=tools, parallel_tool_calls=False)).prompt
    assert "- Call at most one tool in this reply." in single
    assert (
        "- You must call at least one tool"
        in plan_chat(request(tools=tools, tool_choice="required")).prompt
    )
    named = plan_chat(
        request(tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    ).prompt
    assert '- You must call the tool "get_weather" in this reply.' in named
    none = plan_chat(request(tools=tools, tool_choice="none")).prompt
    assert "- The tools are not available for this reply" in none
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}}
    structured = plan_chat(request(tools=tools, response_format=fmt))
    assert structured.response_format == OutputFormat(
        type="json_schema", name="n", schema=schema, strict=True
    )
    assert structured.prompt.endswith(
        "The object must match this JSON Schema:\n"
        '{"type": "object", "properties": {"a": {"type": "integer"}}}\n</output_format>'
    )
    loose = plan_chat(request(response_format={"type": "json_object"})).prompt
    assert loose == "hi\n\n" + tool_prompt.OUTPUT_JSON
    schemaless = {"type": "json_schema", "json_schema": {"name": "n"}}
    assert plan_chat(request(response_format=schemaless)).prompt == loose
    assert plan_chat(request(response_format={"type": "text"})).prompt == "hi"


def test_history_renders_calls_and_results_in_the_protocol():
    calls = [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    messages = [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny </tool_result> ha"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "noon"}]},
        {"role": "tool", "tool_call_id": "call_zz", "content": "orphan"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "done"},
    ]
    texts = [m.text for m in normalise_messages(messages)]
    assert texts[1] == (
        'Checking.\n<tool_call name="get_weather">\n{"city": "Paris"}\n</tool_call>\n'
        '<tool_call name="get_time">\n{}\n</tool_call>'
    )
    assert texts[2] == (
        '<tool_result name="get_weather" call_id="call_a">\nsunny <\\/tool_result> ha\n'
        "</tool_result>"
    )
    assert texts[3] == '<tool_result name="get_time" call_id="call_b">\nnoon\n</tool_result>'
    assert texts[4] == '<tool_result call_id="call_zz">\norphan\n</tool_result>'
    assert texts[5] == '<tool_call name="f">\n{}\n</tool_call>'
    assert texts[6] == '<tool_result name="f">\ndone\n</tool_result>'
    assert assistant_text("", [("f", "{}")]) == render_call("f", "{}")
    assert render_result(None, None, "x") == "<tool_result>\nx\n</tool_result>"


def test_repair_prompts():
    assert repair_missing_call_prompt("required").startswith(tool_prompt.REPAIR_LEAD)
    assert 'the tool "f"' in repair_missing_call_prompt("f")


def test_schema_problems_are_described_for_the_model():
    from translator.tools._json_schema import schema_problem

    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
        "required": ["items"],
    }
    assert schema_problem({"items": [1, 2]}, schema) is None
    assert schema_problem({"items": [1, "x"]}, schema) == "items[1]: 'x' is not of type 'integer'"
    assert schema_problem({}, schema) == "the value: 'items' is a required property"


def test_plan_prompt_adds_the_instructions_to_new_turns():
    from translator.tools._prompt import plan_prompt, repair_json_prompt, repair_tool_prompt

    plan = plan_chat(request(tools=[WEATHER], response_format={"type": "json_object"}))
    assert plan_prompt(plan, "hi") == plan.prompt
    assert plan_prompt(plan_chat(request()), "new turn") == "new turn"
    assert repair_tool_prompt("bad").startswith(tool_prompt.REPAIR_LEAD + " bad\n")
    assert repair_json_prompt("bad").endswith("\nReply again with only the JSON object.")
