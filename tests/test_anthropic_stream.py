"""MessagesEncoder (OpenAI chunks → Anthropic Messages stream events), fold_message,
encode_event and the Anthropic error mapping.

Every event and every folded message is validated against schemas/anthropic and parsed with the
anthropic SDK's own types."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.golden import list_scenarios, load_scenario, replay
from tests.schema_check import assert_valid
from tests.tool_streams import legacy_body
from tests.tool_streams import request as tool_request
from tests.tool_streams import run as run_stream
from translator import (
    LocalProtocolError,
    MessagesEncoder,
    RemoteProtocolError,
    TranslatorError,
    anthropic_error,
    encode_event,
    estimate_tokens,
    fold_message,
    thinking_signature,
)
from translator._sse import SSEDecoder
from translator.chat._response import ResponseTranslator
from translator.connect._stream import ConnectDecoder
from translator.legacy._stream import LegacyDecoder

EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any):
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "kimi",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
    }
    body.update(extra)
    return body


def usage_chunk(completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "kimi",
        "choices": [],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": completion,
            "total_tokens": 3 + completion,
        },
    }


def check(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate every event (schema + SDK type) and the fold (schema + SDK type)."""
    for event in events:
        assert_valid("anthropic.event", event)
        if event["type"] not in ("ping", "error"):
            EVENT.validate_python(event)
    message = fold_message(events)
    assert_valid("anthropic.message", message)
    anthropic.types.Message.model_validate(message)
    return message


def run(chunks, *, stop_sequence=None, groups=None, **kw):
    encoder = MessagesEncoder(model="claude-x", input_tokens=7, **kw)
    events: list[dict[str, Any]] = []
    for group in groups or [[c] for c in chunks]:
        events.extend(encoder.feed(group))
    encoder.stop_sequence = stop_sequence
    events.extend(encoder.close())
    return events


def test_text_answer():
    events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
        ]
    )
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]["message"]
    assert start["id"] == "msg_chatcmpl-1"
    assert start["model"] == "claude-x"
    assert start["usage"] == {"input_tokens": 7, "output_tokens": 0}
    message = check(events)
    assert message["content"] == [{"type": "text", "text": "Hello"}]
    assert message["stop_reason"] == "end_turn"
    assert message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 7, "output_tokens": estimate_tokens("Hello")}
    # A ping while Kimi is silent changes nothing.
    assert fold_message([events[0], MessagesEncoder.ping(), *events[1:]]) == message


def test_thinking_then_text_with_a_signature_and_usage_chunk():
    events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Let me "}),
            chunk({"reasoning_content": "think."}),
            chunk({"content": "Answer."}),
            chunk({}, "stop"),
            usage_chunk(42),
        ]
    )
    types = [(e["type"], e.get("delta", {}).get("type")) for e in events]
    assert ("content_block_delta", "signature_delta") in types
    # The signature comes right before the thinking block stops.
    sig = types.index(("content_block_delta", "signature_delta"))
    assert events[sig + 1] == {"type": "content_block_stop", "index": 0}
    message = check(events)
    assert message["content"] == [
        {
            "type": "thinking",
            "thinking": "Let me think.",
            "signature": thinking_signature("Let me think."),
        },
        {"type": "text", "text": "Answer."},
    ]
    assert message["usage"]["output_tokens"] == 42
    assert thinking_signature("x") == thinking_signature("x") != thinking_signature("y")


def test_tool_calls():
    events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Let me read it."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "Read", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"file_'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'path":"a.txt"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "Bash", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 2, "function": {"name": "Noop"}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    message = check(events)
    assert message["content"] == [
        {"type": "text", "text": "Let me read it."},
        {"type": "tool_use", "id": "call_a", "name": "Read", "input": {"file_path": "a.txt"}},
        {"type": "tool_use", "id": "call_b", "name": "Bash", "input": {}},
        {"type": "tool_use", "id": "toolu_2", "name": "Noop", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert [e["index"] for e in events if e["type"] == "content_block_start"] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("finish", "stop_sequence", "reason"),
    [
        ("stop", None, "end_turn"),
        ("stop", "END", "stop_sequence"),
        ("length", "END", "max_tokens"),
        ("content_filter", None, "refusal"),
        ("function_call", None, "tool_use"),
        ("something_new", None, "end_turn"),
        (None, None, "end_turn"),
    ],
)
def test_stop_reasons(finish, stop_sequence, reason):
    events = run([chunk({"content": "x"}), chunk({}, finish)], stop_sequence=stop_sequence)
    message = check(events)
    assert message["stop_reason"] == reason
    assert message["stop_sequence"] == (stop_sequence if reason == "stop_sequence" else None)


def test_empty_answer_still_has_a_message_and_a_given_id():
    events = run([], message_id="msg_fixed")
    message = check(events)
    assert message["id"] == "msg_fixed"
    assert message["content"] == []
    events = run([{"id": "", "choices": None}])
    assert check(events)["id"] == "msg_kimi"


def test_close_twice_raises():
    encoder = MessagesEncoder(model="m", input_tokens=0)
    encoder.close()
    with pytest.raises(RuntimeError):
        encoder.close()


def test_started():
    encoder = MessagesEncoder(model="m", input_tokens=0)
    assert not encoder.started
    assert encoder.feed([]) == []
    assert not encoder.started
    encoder.feed([chunk({"role": "assistant", "content": ""})])
    assert encoder.started


def test_fold_refuses_incomplete_streams():
    with pytest.raises(ValueError, match="before message_start"):
        fold_message([{"type": "ping"}])
    events = run([chunk({"content": "x"})])
    with pytest.raises(ValueError, match="message_stop"):
        fold_message(events[:-1])
    with pytest.raises(ValueError, match="message_stop"):
        fold_message([])


def test_ping_and_error_events_and_their_bytes():
    assert MessagesEncoder.ping() == {"type": "ping"}
    assert_valid("anthropic.event", MessagesEncoder.ping())
    err = RemoteProtocolError("Kimi broke", status=502)
    event = MessagesEncoder.error_event(err)
    assert event == {"type": "error", "error": {"type": "api_error", "message": "Kimi broke"}}
    assert_valid("anthropic.event", event)
    data = encode_event(event)
    assert data.startswith(b"event: error\ndata: {")
    decoded = SSEDecoder().feed(data)
    assert decoded[0].event == "error"
    assert json.loads(decoded[0].data) == event


@pytest.mark.parametrize(
    ("err", "status", "kind"),
    [
        (LocalProtocolError("bad"), 400, "invalid_request_error"),
        (TranslatorError("who", status=401), 401, "authentication_error"),
        (TranslatorError("pay", status=402), 402, "billing_error"),
        (TranslatorError("no", status=403), 403, "permission_error"),
        (TranslatorError("gone", status=404), 404, "not_found_error"),
        (TranslatorError("big", status=413), 413, "invalid_request_error"),
        (TranslatorError("encoding", status=415), 415, "invalid_request_error"),
        (TranslatorError("headers", status=431), 431, "invalid_request_error"),
        (TranslatorError("slow down", status=429), 429, "rate_limit_error"),
        (RemoteProtocolError("busy", status=503), 529, "overloaded_error"),
        (RemoteProtocolError("stalled", status=504), 504, "timeout_error"),
        (RemoteProtocolError("broken"), 502, "api_error"),
        (TranslatorError("bug"), 500, "api_error"),
    ],
)
def test_error_mapping(err, status, kind):
    got_status, body = anthropic_error(err)
    assert got_status == status
    assert body == {"type": "error", "error": {"type": kind, "message": err.message}}
    assert_valid("anthropic.error", body)
    anthropic.types.ErrorResponse.model_validate(body)


# --- chunking invariance (style.md R9) ---------------------------------------------------------


def cutter(points):
    def cut(body):
        marks = sorted({p % (len(body) + 1) for p in points})
        return [body[a:b] for a, b in zip([0, *marks], [*marks, len(body)], strict=True)]

    return cut


def chunks_of(dialect: str, name: str, points: list[int]) -> list[dict[str, Any]] | None:
    """The chat chunks of a golden exchange fed in pieces cut at `points`; None when it ends in
    an error (no Message then)."""
    scenario = load_scenario(name, dialect)
    if dialect == "legacy":
        result = replay(scenario, LegacyDecoder, cutter(points))
        return None if result["raised"] else result["chunks"]
    translator = ResponseTranslator(
        ConnectDecoder(), completion_id=None, model="kimi", created=1, include_usage=True
    )
    chunks: list[dict[str, Any]] = []
    try:
        for piece in cutter(points)(scenario.upstream):
            chunks += translator.feed(piece)
        chunks += translator.close()
    except RemoteProtocolError:
        return None
    return chunks


#: the golden exchanges of both dialects that end in an answer (errors end before a Message)
SCENARIOS = [
    (dialect, name)
    for dialect in ("legacy", "connect")
    for name in list_scenarios(dialect)
    if chunks_of(dialect, name, []) is not None
]


def deltas(events: list[dict[str, Any]]) -> dict[str, str]:
    """Concatenated deltas by kind (text, thinking, tool JSON)."""
    out: dict[str, str] = {}
    for event in events:
        if event["type"] == "content_block_delta":
            delta = dict(event["delta"])
            kind = delta.pop("type")
            out[kind] = out.get(kind, "") + next(iter(delta.values()))
    return out


def encode_replay(dialect: str, name: str, points: list[int]) -> list[dict[str, Any]]:
    chunks = chunks_of(dialect, name, points)
    assert chunks is not None
    return run(chunks)


def test_both_dialects_have_answer_fixtures():
    assert {d for d, _ in SCENARIOS} == {"legacy", "connect"}


@given(st.sampled_from(SCENARIOS), st.lists(st.integers(0, 10_000), max_size=12))
def test_fixtures_give_the_same_message_under_any_split(scenario, points):
    whole = encode_replay(*scenario, [])
    split = encode_replay(*scenario, points)
    assert fold_message(split) == check(whole)
    assert deltas(split) == deltas(whole)


_piece = st.text(alphabet=st.sampled_from(list('ab {}":,你🙂\n')), max_size=6)


@st.composite
def answers(draw):
    """A synthetic answer as OpenAI chunks: thinking, text, tool calls, each in random pieces,
    and the same answer with the pieces cut differently."""
    parts = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["reasoning_content", "content", "tool"]),
                st.lists(_piece, max_size=4),
            ),
            max_size=5,
        )
    )
    plan: list[tuple[str, str]] = []
    calls = 0
    for kind, pieces in parts:
        if kind == "tool":
            args = json.dumps({"p": "".join(pieces)}, ensure_ascii=False)
            plan.append((f"tool:{calls}", args))
            calls += 1
        else:
            plan.append((kind, "".join(pieces)))
    return plan


def chunks_for(plan, points):
    out = [chunk({"role": "assistant", "content": ""})]
    for kind, text in plan:
        marks = sorted({p % (len(text) + 1) for p in points})
        pieces = [text[a:b] for a, b in zip([0, *marks], [*marks, len(text)], strict=True)]
        if kind.startswith("tool:"):
            index = int(kind[5:])
            out.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": f"call_{index}",
                                "type": "function",
                                "function": {"name": "f", "arguments": ""},
                            }
                        ]
                    }
                )
            )
            out += [
                chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
                for p in pieces
            ]
        else:
            out += [chunk({kind: p}) for p in pieces]
    out.append(chunk({}, "tool_calls" if any(k.startswith("tool:") for k, _ in plan) else "stop"))
    return out


@given(
    answers(), st.lists(st.integers(0, 50), max_size=6), st.lists(st.integers(0, 50), max_size=6)
)
def test_synthetic_answers_give_the_same_message_under_any_split(plan, points, groups):
    whole = run(chunks_for(plan, []))
    chunks = chunks_for(plan, points)
    marks = sorted({g % (len(chunks) + 1) for g in groups})
    grouped = [chunks[a:b] for a, b in zip([0, *marks], [*marks, len(chunks)], strict=True)]
    split = run(chunks, groups=grouped)
    assert check(split) == check(whole)
    assert deltas(split) == deltas(whole)


# --- which stop sequence ended the answer ------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "deltas", "expected", "content"),
    [
        (["END", "HALT"], ["one two HA", "LT three END"], "HALT", "one two "),
        (["END", "HALT"], ["one END two HALT"], "END", "one "),
        (["END"], ["no stop here"], None, "no stop here"),
        (None, ["plain"], None, "plain"),  # no shaper at all
    ],
)
def test_the_translator_says_which_stop_string_cut_the_answer(stop, deltas, expected, content):
    extra = {} if stop is None else {"stop": stop}
    result = run_stream(
        {"model": "kimi", "messages": [{"role": "user", "content": "x"}], **extra},
        [legacy_body(deltas)],
    )
    assert result.translator is not None
    assert result.translator.stop_string == expected
    assert result.content == content
    encoder_events = run(result.chunks, stop_sequence=result.translator.stop_string)
    message = check(encoder_events)
    if expected is None:
        assert message["stop_reason"] == "end_turn"
    else:
        assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", expected)


# --- a Kimi answer with tool calls, through the whole response side ----------------------------

TOOL_ANSWER = (
    "Let me check. "
    '<tool_call name="get_weather">\n{"city": "Paris"}\n</tool_call>\n'
    '<tool_call name="get_time">\n{}\n</tool_call>'
)


def tool_events(points: list[int]) -> list[dict[str, Any]]:
    body = legacy_body([TOOL_ANSWER[i : i + 7] for i in range(0, len(TOOL_ANSWER), 7)])
    result = run_stream(tool_request(), [body], cut=cutter(points))
    assert result.error is None
    return run(result.chunks)


@given(st.lists(st.integers(0, 10_000), max_size=12))
def test_tool_call_answers_give_the_same_message_under_any_split(points):
    whole = check(tool_events([]))
    assert whole["stop_reason"] == "tool_use"
    assert whole["content"][0] == {"type": "text", "text": "Let me check. "}
    assert [(b["name"], b["input"]) for b in whole["content"][1:]] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    split = tool_events(points)
    assert check(split) == whole
    assert deltas(split) == deltas(tool_events([]))
