"""translator.responses._stream: chat chunks → Responses events, and the folded Response.

Synthetic chunks in OpenAI's `chat.completion.chunk` shape (text, reasoning, tool_calls deltas
with finish_reason "tool_calls", annotations, usage), and the golden Kimi streams of both
dialects through the real ResponseTranslator. Every event and Response is validated against
schemas/openai/responses-*.json, and the fold always equals the terminal event's Response.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.golden import list_scenarios, load_scenario
from tests.schema_check import assert_valid
from translator import (
    LocalProtocolError,
    RemoteProtocolError,
    ResponsesEncoder,
    ResponseTranslator,
    fold_response,
    plan_responses,
)
from translator.connect._stream import ConnectDecoder
from translator.legacy._stream import LegacyDecoder

ECHO = plan_responses({"model": "kimi", "input": "hi"}).echo
BASE = {"id": "chat1", "object": "chat.completion.chunk", "created": 1, "model": "kimi"}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {**BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def usage(prompt: int = 3, completion: int = 4) -> dict[str, Any]:
    return {
        **BASE,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def call(
    index: int, *, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {}}
    if id is not None:
        piece["id"] = id
        piece["type"] = "function"
    if name is not None:
        piece["function"]["name"] = name
    if args is not None:
        piece["function"]["arguments"] = args
    return piece


def encoder() -> ResponsesEncoder:
    return ResponsesEncoder(response_id="resp_abc", created_at=10, echo=ECHO)


def run(chunks: list[dict[str, Any]], *, fail: Exception | None = None) -> list[dict[str, Any]]:
    enc = encoder()
    events = enc.feed(chunks)
    events += enc.fail(fail) if fail is not None else enc.close(completed_at=11)
    assert enc.ended
    return checked(events)


def checked(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in events:
        assert_valid("openai.responses.event", event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    folded = fold_response(events)
    assert_valid("openai.responses.response", folded)
    assert folded == events[-1]["response"]
    return events


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_text_answer_event_sequence():
    events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            usage(),
        ]
    )
    assert kinds(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    response = events[-1]["response"]
    assert response["status"] == "completed"
    assert response["completed_at"] == 11
    assert response["output"] == [
        {
            "id": "msg_abc_0",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
            ],
        }
    ]
    assert response["usage"] == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }


def test_reasoning_then_text_are_two_items():
    events = run(
        [
            chunk({"reasoning_content": "hmm "}),
            chunk({"reasoning_content": "yes"}),
            chunk({"content": "Answer"}),
            chunk({}, "stop"),
            usage(),
        ]
    )
    reasoning, message = events[-1]["response"]["output"]
    assert reasoning == {
        "id": "rs_abc_0",
        "type": "reasoning",
        "status": "completed",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "hmm yes"}],
    }
    assert message["id"] == "msg_abc_1"
    assert "response.reasoning_text.done" in kinds(events)
    assert events[-1]["response"]["usage"]["output_tokens_details"]["reasoning_tokens"] == 2


def test_tool_calls_become_function_call_items():
    events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Let me look."}),
            chunk({"tool_calls": [call(0, id="call_1", name="read", args="")]}),
            chunk({"tool_calls": [call(0, args='{"path":')]}),
            chunk({"tool_calls": [call(0, args='"a"}')]}),
            chunk({"tool_calls": [call(1, id="call_2", name="ls", args="{}")]}),
            chunk({"tool_calls": [call(2, name="anon")]}),
            chunk({}, "tool_calls"),
            usage(),
        ]
    )
    message, first, second, third = events[-1]["response"]["output"]
    assert message["content"][0]["text"] == "Let me look."
    assert first == {
        "id": "fc_abc_1",
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "read",
        "arguments": '{"path":"a"}',
    }
    assert (second["call_id"], second["arguments"]) == ("call_2", "{}")
    assert (third["call_id"], third["name"], third["arguments"]) == ("call_2", "anon", "")
    assert events[-1]["response"]["status"] == "completed"
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["name"], e["arguments"]) for e in done] == [
        ("read", '{"path":"a"}'),
        ("ls", "{}"),
        ("anon", ""),
    ]


def test_a_call_without_an_id_gets_one_from_its_index():
    events = run(
        [
            chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    (item,) = events[-1]["response"]["output"]
    assert item["call_id"] == "call_0"
    assert "usage" not in events[-1]["response"]


def test_a_new_id_at_the_same_index_is_a_new_call():
    events = run(
        [
            chunk({"tool_calls": [call(0, id="a", name="f", args="1")]}),
            chunk({"tool_calls": [call(0, id="a", args="2")]}),
            chunk({"tool_calls": [call(0, id="b", name="g", args="3")]}),
            chunk({}, "tool_calls"),
        ]
    )
    first, second = events[-1]["response"]["output"]
    assert (first["arguments"], second["arguments"]) == ("12", "3")


def test_arguments_for_a_closed_call_are_a_protocol_error():
    enc = encoder()
    enc.feed(
        [
            chunk({"tool_calls": [call(0, id="a", name="f")]}),
            chunk({"tool_calls": [call(1, id="b", name="g")]}),
        ]
    )
    with pytest.raises(RemoteProtocolError):
        enc.feed([chunk({"tool_calls": [call(0, args="late")]})])


def test_annotations_attach_to_the_open_message_relative_to_its_text():
    cite = lambda start, end: {  # noqa: E731
        "type": "url_citation",
        "url_citation": {
            "url": "https://a.example/",
            "title": "A",
            "start_index": start,
            "end_index": end,
        },
    }
    events = run(
        [
            chunk({"content": "one "}),
            chunk({"tool_calls": [call(0, id="c", name="f", args="{}")]}),
            chunk({"content": "two [A]"}),
            chunk({"annotations": [cite(8, 11), cite(0, 0)]}, "stop"),
            usage(),
        ]
    )
    message = events[-1]["response"]["output"][2]
    assert message["content"][0]["annotations"] == [
        {
            "type": "url_citation",
            "url": "https://a.example/",
            "title": "A",
            "start_index": 4,
            "end_index": 7,
        },
        {
            "type": "url_citation",
            "url": "https://a.example/",
            "title": "A",
            "start_index": 0,
            "end_index": 0,
        },
    ]
    added = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert [e["annotation_index"] for e in added] == [0, 1]


def test_annotations_without_an_open_message_are_not_placed():
    events = run(
        [
            chunk({"tool_calls": [call(0, id="c", name="f", args="{}")]}),
            chunk(
                {
                    "annotations": [
                        {
                            "type": "url_citation",
                            "url_citation": {
                                "url": "https://a.example/",
                                "title": "A",
                                "start_index": 0,
                                "end_index": 0,
                            },
                        }
                    ]
                },
                "tool_calls",
            ),
        ]
    )
    assert "response.output_text.annotation.added" not in kinds(events)


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_incomplete_answers(finish, reason):
    enc = encoder()
    events = enc.feed([chunk({"content": "cut"}), chunk({}, finish), usage()])
    assert enc.finish_reason == finish
    events = checked(events + enc.close(completed_at=11))
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": reason}
    assert response["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize(("status", "code"), [(429, "rate_limit_exceeded"), (502, "server_error")])
def test_failure_mid_answer(status, code):
    events = run(
        [chunk({"content": "part"})], fail=RemoteProtocolError("Kimi broke off", status=status)
    )
    assert events[-1]["type"] == "response.failed"
    response = events[-1]["response"]
    assert response["error"] == {"code": code, "message": "Kimi broke off"}
    assert response["output"][0]["status"] == "incomplete"


def test_failure_after_a_closed_item_and_chunks_without_choices():
    enc = encoder()
    events = enc.feed(
        [
            {**BASE, "choices": []},
            chunk(None),
            chunk({"content": "x"}),
            chunk({"tool_calls": [call(0, id="c", name="f", args="{}")]}),
        ]
    )
    events += enc.feed([chunk({}, "tool_calls")])
    events += enc.feed([chunk({"content": "more"})])  # closes the call, then the stream breaks
    events = checked(events + enc.fail(LocalProtocolError("bad")))
    statuses = [item["status"] for item in events[-1]["response"]["output"]]
    assert statuses == ["completed", "completed", "incomplete"]


def test_fold_needs_a_terminal_event():
    enc = encoder()
    with pytest.raises(ValueError, match=r"before response\.completed"):
        fold_response(enc.feed([chunk({"content": "x"})]))


# --- the golden streams, any split: the same fold and the same deltas -------------------------

SCENARIOS = [(name, "legacy") for name in list_scenarios("legacy")] + [
    (name, "connect") for name in list_scenarios("connect")
]
DECODERS = {"legacy": LegacyDecoder, "connect": ConnectDecoder}


def through_both(
    name: str, dialect: str, cut: list[int], *, validate: bool = False
) -> tuple[list[dict[str, Any]], str]:
    """A golden stream through ResponseTranslator and the encoder, cut at `cut`: the events and
    the terminal kind."""
    scenario = load_scenario(name, dialect)  # type: ignore[arg-type]
    decoder = DECODERS[dialect]
    # Connect fixtures carry no translator parameters; include_usage as the Responses face asks.
    kwargs = {
        "completion_id": None,
        "model": "kimi",
        "created": 1,
        **scenario.translator_kwargs,
        "include_usage": True,
    }
    translator = ResponseTranslator(decoder(), **kwargs)
    enc = encoder()
    events: list[dict[str, Any]] = []
    try:
        for index, body in enumerate([scenario.upstream, *scenario.continuations]):
            if index:
                if translator.continuation_segment is None:
                    break
                translator.begin_continuation(decoder())
            marks = sorted({p % (len(body) + 1) for p in cut})
            for a, b in zip([0, *marks], [*marks, len(body)], strict=True):
                events += enc.feed(translator.feed(body[a:b]))
        events += enc.feed(translator.close())
        events += enc.close(completed_at=11)
    except RemoteProtocolError as err:
        events += enc.fail(err)
    if validate:
        checked(events)
    assert fold_response(events) == events[-1]["response"]
    return events, events[-1]["type"]


def deltas(events: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for event in events:
        if event["type"].endswith(".delta"):
            out[event["type"]] = out.get(event["type"], "") + event["delta"]
    return out


@given(st.sampled_from(SCENARIOS), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_gives_the_same_response(scenario, cut):
    name, dialect = scenario
    whole, kind = through_both(name, dialect, [])
    split, split_kind = through_both(name, dialect, cut)
    assert split_kind == kind
    assert fold_response(split) == fold_response(whole)
    assert deltas(split) == deltas(whole)
    folded = fold_response(whole)
    texts = "".join(
        p["text"] for item in folded["output"] if item["type"] == "message" for p in item["content"]
    )
    assert deltas(whole).get("response.output_text.delta", "") == texts


@pytest.mark.parametrize(("name", "dialect"), SCENARIOS)
def test_every_golden_stream_encodes_validly(name, dialect):
    through_both(name, dialect, [7, 31], validate=True)


# --- synthetic answers with tool calls, any split of their deltas ----------------------------

_piece_text = st.text(alphabet=st.sampled_from(list('ab {}":,\n你🙂')), min_size=1, max_size=12)


def _split(text: str, cuts: list[int]) -> list[str]:
    marks = sorted({c % (len(text) + 1) for c in cuts} - {0, len(text)})
    return [text[a:b] for a, b in zip([0, *marks], [*marks, len(text)], strict=True)]


@st.composite
def answers(draw):
    """(the answer's parts, a way to cut each of them): reasoning, text, then calls."""
    reasoning = draw(st.one_of(st.just(""), _piece_text))
    text = draw(st.one_of(st.just(""), _piece_text))
    calls = draw(st.lists(st.tuples(st.sampled_from(["f", "read"]), _piece_text), max_size=3))
    if not (reasoning or text or calls):
        text = "x"
    cuts = draw(st.lists(st.lists(st.integers(0, 50), max_size=4), min_size=6, max_size=6))
    return reasoning, text, calls, cuts


def as_chunks(reasoning: str, text: str, calls, cuts) -> list[dict[str, Any]]:
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"reasoning_content": p}) for p in _split(reasoning, cuts[0]) if reasoning]
    chunks += [chunk({"content": p}) for p in _split(text, cuts[1]) if text]
    for index, (name, arguments) in enumerate(calls):
        pieces = _split(arguments, cuts[2 + index])
        chunks.append(
            chunk({"tool_calls": [call(index, id=f"call_{index}", name=name, args=pieces[0])]})
        )
        chunks += [chunk({"tool_calls": [call(index, args=p)]}) for p in pieces[1:]]
    chunks.append(chunk({}, "tool_calls" if calls else "stop"))
    chunks.append(usage())
    return chunks


def encode(chunks: list[dict[str, Any]], feeds: list[int]) -> list[dict[str, Any]]:
    """The events for `chunks` fed in groups cut at `feeds`."""
    enc = encoder()
    events: list[dict[str, Any]] = []
    marks = sorted({f % (len(chunks) + 1) for f in feeds})
    for a, b in zip([0, *marks], [*marks, len(chunks)], strict=True):
        events += enc.feed(chunks[a:b])
    return events + enc.close(completed_at=11)


@given(answers(), st.lists(st.integers(0, 200), max_size=6))
def test_any_split_of_a_tool_answer_gives_the_same_response(answer, feeds):
    # Events are schema-checked in the examples above; here only what must not depend on the
    # split is compared (the schemas are large: validating every event would dominate).
    reasoning, text, calls, cuts = answer
    whole = encode(as_chunks(reasoning, text, calls, [[]] * 6), [])
    split = encode(as_chunks(reasoning, text, calls, cuts), feeds)
    assert [e["sequence_number"] for e in split] == list(range(len(split)))
    folded = fold_response(split)
    assert folded == split[-1]["response"] == fold_response(whole)
    assert deltas(split) == deltas(whole)
    assert [
        (i["name"], i["arguments"]) for i in folded["output"] if i["type"] == "function_call"
    ] == calls


@pytest.mark.parametrize("calls", [[], [("f", "{}")], [("f", '{"a":'), ("read", "1}")]])
def test_tool_answers_encode_validly(calls):
    checked(encode(as_chunks("why", "so", calls, [[1], [1], [1], [2], [3], []]), [2, 5]))
