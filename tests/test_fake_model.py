"""The fake Kimi plays a model for tool and JSON-output prompts (fixtures/fake_kimi/_model.py):
scripted scenarios and the generic agent, on their own and through both wire dialects."""

from __future__ import annotations

import json

import httpx
import pytest

from fixtures.fake_kimi import FakeKimi
from fixtures.fake_kimi._model import SCENARIOS, example_for, model_answer
from tests.test_fake_kimi_connect import answer_text, chat, chat_body
from tests.test_fake_kimi_connect import login as connect_login
from tests.test_fake_kimi_legacy import complete, login, text_of
from translator import plan_chat
from translator.tools._prompt import repair_json_prompt, repair_tool_prompt

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
GOOD = '<tool_call name="get_weather">\n{"city": "example", "days": 1}\n</tool_call>'


def prompt(text: str, *, tools=(WEATHER, TIME), **extra) -> str:
    request = {"model": "kimi", "messages": [{"role": "user", "content": text}], **extra}
    if tools:
        request["tools"] = list(tools)
    return plan_chat(request).prompt


def test_no_instructions_means_the_echo():
    assert model_answer("just chatting [[scenario:one_call]]") is None
    assert model_answer(prompt("hello", tools=())) is None


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("one_call", GOOD),
        ("two_calls", GOOD + '\n<tool_call name="get_time">\n{}\n</tool_call>'),
        ("text_then_call", "Let me check that for you.\n" + GOOD),
        ("fenced_call", f"A call looks like this:\n```\n{GOOD}\n```\nThat was only an example."),
        ("unclosed", GOOD.removesuffix("\n</tool_call>")),
        (
            "hermes",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "example", "days": 1}}'
            "\n</tool_call>",
        ),
        (
            "string_args",
            '<tool_call name="get_weather">\n"{\\"city\\": \\"example\\", \\"days\\": 1}"'
            "\n</tool_call>",
        ),
        (
            "kimi_native",
            "Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
            '<|tool_call_argument_begin|>{"city": "example", "days": 1}<|tool_call_end|>'
            "<|tool_calls_section_end|>",
        ),
        ("no_call", "I would rather answer in words: 42."),
    ],
)
def test_scripted_scenarios(scenario, expected):
    assert model_answer(prompt(f"weather? [[scenario:{scenario}]]")) == expected


def test_bad_first_answers_are_repaired_in_the_same_conversation():
    first = prompt("weather? [[scenario:invalid_args]]")
    bad = model_answer(first)
    assert bad == '<tool_call name="get_weather">\n{"city": 12345, "days": 1}\n</tool_call>'
    assert model_answer(repair_tool_prompt("city: 12345 is not a string"), [first]) == GOOD
    first = prompt("weather? [[scenario:unknown_tool]]")
    assert model_answer(first).startswith('<tool_call name="no_such_tool">')
    assert model_answer(repair_tool_prompt("unknown tool"), [first]) == GOOD
    first = prompt("weather? [[scenario:invalid_always]]")
    assert model_answer(repair_tool_prompt("x"), [first]) == model_answer(first)


def test_named_and_required_choices_get_a_call():
    named = {"type": "function", "function": {"name": "get_time"}}
    assert model_answer(prompt("hi", tool_choice=named)) == (
        '<tool_call name="get_time">\n{}\n</tool_call>'
    )
    assert model_answer(prompt("hi", tool_choice="required")) == GOOD
    assert model_answer(prompt("hi")) is None  # auto, nothing to do: the echo
    assert model_answer(prompt("read the file /a.txt", tool_choice="none")) is None


def test_chain_calls_twice_then_answers():
    history = [{"role": "user", "content": "go [[scenario:chain]]"}]
    tools = [WEATHER]
    answers = []
    for step in range(3):
        text = plan_chat({"model": "kimi", "messages": history, "tools": tools}).prompt
        answers.append(model_answer(text))
        call_id = f"call_{step}"
        history += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": f"sunny {step}"},
        ]
    assert answers[0] == "Step 1.\n" + GOOD
    assert answers[1] == "Step 2.\n" + GOOD
    assert answers[2] == "Done after 2 tool results; the last one said: sunny 1"


READ = {
    "type": "function",
    "function": {
        "name": "Read",
        "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}}},
    },
}
EXEC = {
    "type": "function",
    "function": {
        "name": "exec_command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("tool", "call", "result"),
    [
        (READ, {"file_path": "/tmp/x/notes.txt"}, "     1\tline one\n     2\tline two"),
        (
            EXEC,
            {"cmd": "cat /tmp/x/notes.txt"},
            "Chunk ID: 1\nWall time: 0.0 seconds\nProcess exited with code 0\n"
            "Original token count: 4\nOutput:\nline one\nline two",
        ),
    ],
)
def test_the_generic_agent_reads_a_file_then_reports_it(tool, call, result):
    ask = {"role": "user", "content": "Please read the file /tmp/x/notes.txt."}
    system = {"role": "system", "content": "You are an agent."}
    first = plan_chat({"model": "kimi", "messages": [system, ask], "tools": [WEATHER, tool]})
    name = tool["function"]["name"]
    assert model_answer(first.prompt) == (
        f'<tool_call name="{name}">\n{json.dumps(call)}\n</tool_call>'
    )
    calls = [{"id": "c1", "type": "function", "function": {"name": name, "arguments": "{}"}}]
    messages = [
        system,
        ask,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": result},
    ]
    second = plan_chat({"model": "kimi", "messages": messages, "tools": [WEATHER, tool]})
    assert model_answer(second.prompt) == "The file says: line one\nline two"


def test_json_answers():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
            "kind": {"anyOf": [{"type": "null"}, {"enum": ["a", "b"]}]},
        },
        "$defs": {"Tag": {"type": "object", "properties": {"v": {"type": "number"}}}},
        "required": ["name"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    text = prompt("describe it", tools=(), response_format=fmt)
    expected = {"name": "example", "tags": [{"v": 1}], "kind": "a"}
    assert json.loads(model_answer(text)) == expected
    assert example_for(schema) == expected
    fenced = model_answer(prompt("x [[scenario:json_fenced]]", tools=(), response_format=fmt))
    assert f"```json\n{json.dumps(expected)}\n```" in fenced
    first = prompt("x [[scenario:json_invalid]]", tools=(), response_format=fmt)
    assert model_answer(first) == '{"broken": tru'
    assert json.loads(model_answer(repair_json_prompt("bad"), [first])) == expected
    loose = prompt("say hi", tools=(), response_format={"type": "json_object"})
    assert json.loads(model_answer(loose)) == {"answer": "say hi"}


def test_every_scenario_answers_something():
    text = prompt("x")
    for name in SCENARIOS:
        assert model_answer(text + f" [[scenario:{name}]]")


async def test_both_dialects_repair_in_the_same_conversation():
    first = prompt("weather? [[scenario:invalid_args]]")
    repair = repair_tool_prompt("city: 12345 is not of type 'string'")
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        chat_id = (await c.post("/api/chat", json={"name": "n"}, headers=auth)).json()["id"]
        answers = []
        for text in (first, repair):
            body = {"messages": [{"role": "user", "content": text}], "refs": []}
            status, events = await complete(c, auth, chat_id, body)
            assert status == 200
            answers.append(text_of(events))
        assert answers == [model_answer(first), GOOD]

        auth = await connect_login(c, "rt-connect")
        frames = await chat(c, auth, chat_body(first))
        chat_id = frames[0][1]["chat"]["id"]
        parent = next(
            p["message"]["id"]
            for _, p in frames
            if p.get("message", {}).get("role") == "assistant"
        )
        frames2 = await chat(c, auth, chat_body(repair, chat_id=chat_id, parent_id=parent))
        assert [answer_text(frames), answer_text(frames2)] == [model_answer(first), GOOD]


async def test_the_echo_leaves_our_instructions_out():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        chat_id = (await c.post("/api/chat", json={"name": "n"}, headers=auth)).json()["id"]
        body = {"messages": [{"role": "user", "content": prompt("hello there")}], "refs": []}
        _, events = await complete(c, auth, chat_id, body)
        assert text_of(events) == "Echo: hello there"
        assert "<tool_instructions>" in kimi.record.conversations[chat_id].messages[0].text
