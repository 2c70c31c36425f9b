"""Hypothesis properties of the response side (style.md R9, R10, R11):

1. chunking invariance: whole ≡ byte-at-a-time ≡ any split, on the golden fixtures and on
   generated Kimi streams (normalised output: content, reasoning, finish_reason, annotations,
   ids, usage, error, event counts);
2. arbitrary or mutated bytes give chunks or a RemoteProtocolError, never another exception;
4. the concatenated stream deltas equal the folded completion;
5. every chunk, fold and error validates against its OpenAI schema;
6. `feed_sse`/`close_sse` write exactly `encode_sse` of what `feed`/`close` return, call by
   call, for any split (and those bytes parse back to valid chunks).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

from fixtures.golden import list_scenarios, load_scenario, normalise, replay
from tests.schema_check import assert_valid
from translator._errors import RemoteProtocolError
from translator._sse import SSEDecoder, encode_sse
from translator.chat._fold import fold_completion
from translator.chat._response import ResponseTranslator
from translator.legacy._stream import LegacyDecoder

SCENARIOS = list_scenarios("legacy")


def comparable(result):
    return {k: v for k, v in result.items() if k not in {"chunks", "raised"}}


def cutter(points):
    def cut(body):
        marks = sorted({p % (len(body) + 1) for p in points})
        return [body[a:b] for a, b in zip([0, *marks], [*marks, len(body)], strict=True)]

    return cut


def bytewise(body):
    return [body[i : i + 1] for i in range(len(body))]


def check_outputs(result, prompt_text=""):
    # Property 5 on everything a replay produced, and property 4 when it ended well.
    for chunk in result["chunks"]:
        assert_valid("openai.chunk", chunk)
    if result["raised"] is not None:
        assert_valid("openai.error", result["raised"].to_openai())
        return
    folded = fold_completion(result["chunks"], prompt_text=prompt_text)
    assert_valid("openai.response", folded)
    message = folded["choices"][0]["message"]
    assert message["content"] == result["content"]
    assert message.get("reasoning_content", "") == result["reasoning"]
    assert message["annotations"] == result["annotations"]
    assert folded["choices"][0]["finish_reason"] == result["finish_reason"]


# -- 1 + 4 + 5 on the golden fixtures ---------------------------------------------------------


@given(st.sampled_from(SCENARIOS), st.lists(st.integers(0, 10_000), max_size=12))
def test_fixtures_are_invariant_under_any_split(name, points):
    scenario = load_scenario(name)
    result = replay(scenario, LegacyDecoder, cutter(points))
    assert comparable(result) == scenario.expected
    check_outputs(result, scenario.meta["prompt_text"])


# -- generated Kimi streams -------------------------------------------------------------------

_text = st.text(
    alphabet=st.sampled_from(list("ab \n[]()你好🙂é\r")) | st.characters(codec="utf-8"),
    max_size=8,
)
_url = st.sampled_from(["https://a.example/", "https://b.example/x (1)", "u", ""])
_result = st.fixed_dictionaries({"url": _url}, optional={"title": _text, "site_name": _text})
kimi_event = st.one_of(
    st.builds(lambda t: {"event": "cmpl", "text": t}, _text),
    st.builds(lambda t: {"event": "cmpl", "text": t}, _text),
    st.builds(lambda t: {"event": "k1", "text": t}, _text),
    st.builds(lambda m: {"event": "search_plus", "msg": {"type": "get_res", **m}}, _result),
    st.builds(
        lambda r: {"event": "k1", "type": "search_results", "search_results": r},
        st.lists(_result, max_size=2),
    ),
    st.builds(lambda r: {"event": "ref_docs", "ref_cards": r}, st.lists(_result, max_size=2)),
    st.builds(lambda i: {"event": "req", "id": i}, st.sampled_from(["s1", "s2"])),
    st.builds(
        lambda t: {"event": "error", "error": {"error_type": t, "message": "m"}},
        st.sampled_from(["chat.forbidden", "chat.user_stream_pushing", "x"]),
    ),
    st.sampled_from(
        [
            {"event": "resp", "id": "r"},
            {"event": "length"},
            {"event": "all_done"},
            {"event": "done"},
            {"event": "ping"},
            {"event": "brand_new"},
        ]
    ),
)


@st.composite
def kimi_streams(draw):
    """A legacy stream: mostly well-formed events, in any order, with any line ends, comments
    and the occasional broken data; sometimes cut at the end."""
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    parts = []
    for ev in draw(st.lists(kimi_event, max_size=10)):
        if draw(st.integers(0, 9)) == 0:
            parts.append(f": comment{eol}")
        if draw(st.integers(0, 19)) == 0:
            parts.append(f"data: not json{eol}{eol}")
        text = json.dumps(ev, ensure_ascii=draw(st.booleans()))
        parts.append(f"data: {text}{eol}{eol}")
    body = "".join(parts).encode("utf-8")
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    return body


def run(body, cut, **kwargs):
    t = ResponseTranslator(
        LegacyDecoder(),
        completion_id=kwargs.pop("completion_id", "cid"),
        model="kimi",
        created=1,
        **kwargs,
    )
    chunks, raised = [], None
    try:
        for piece in cut(body):
            chunks += t.feed(piece)
        chunks += t.close()
    except RemoteProtocolError as err:
        raised = err
    result = normalise(chunks, raised)
    result["event_counts"] = t.event_counts
    result["chunks"] = chunks
    result["raised"] = raised
    return result


@given(
    kimi_streams(),
    st.lists(st.integers(0, 10_000), max_size=10),
    st.booleans(),
    st.booleans(),
)
@example(
    body=b'data: {"event":"cmpl","text":"a"}\n\ndata: x\n\n', points=[], silent=False, usage=True
)
@example(body=b'data: {"event":"cmpl","text":"a"}\r', points=[34], silent=False, usage=False)
def test_generated_streams_are_invariant_under_any_split(body, points, silent, usage):
    note(repr(body))
    whole = run(body, lambda b: [b], silent=silent, include_usage=usage)
    split = run(body, cutter(points), silent=silent, include_usage=usage)
    assert comparable(split) == comparable(whole)
    check_outputs(whole)
    check_outputs(split)


@given(kimi_streams())
def test_generated_streams_byte_by_byte(body):
    whole = run(body, lambda b: [b], completion_id=None)
    assert comparable(run(body, bytewise, completion_id=None)) == comparable(whole)


# -- 2: totality on arbitrary and mutated bytes -------------------------------------------------


@given(st.binary(max_size=600), st.lists(st.integers(0, 10_000), max_size=6))
def test_arbitrary_bytes_give_chunks_or_a_protocol_error(body, points):
    result = run(body, cutter(points))  # `run` catches only RemoteProtocolError
    check_outputs(result)


@st.composite
def mutated_fixture(draw):
    body = bytearray(load_scenario(draw(st.sampled_from(SCENARIOS))).upstream)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        at = draw(st.integers(0, len(body)))
        if op == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif body and at < len(body):
            if op == "flip":
                body[at] = draw(st.integers(0, 255))
            else:
                del body[at]
    return bytes(body)


@given(mutated_fixture(), st.lists(st.integers(0, 10_000), max_size=6))
def test_mutated_fixtures_give_chunks_or_a_protocol_error(body, points):
    result = run(body, cutter(points))
    check_outputs(result)
    assert comparable(result) == comparable(run(body, lambda b: [b]))


# -- 6: feed_sse / close_sse write exactly what encode_sse makes of feed / close --------------


def lockstep_sse(bodies, cut, decoder=LegacyDecoder, **kwargs):
    """Two translators in step over the same pieces: one through feed/close + encode_sse, one
    through feed_sse/close_sse. Every call must give the same bytes or the same error."""
    kwargs = {"completion_id": "cid", "model": "kimi", "created": 1, **kwargs}
    plain = ResponseTranslator(decoder(), **kwargs)
    fast = ResponseTranslator(decoder(), **kwargs)
    written = b""

    def both(call_plain, call_fast):
        nonlocal written
        error = None
        try:
            expected = b"".join(encode_sse(c) for c in call_plain())
        except RemoteProtocolError as exc:
            error = exc
        if error is not None:
            with pytest.raises(RemoteProtocolError) as info:
                call_fast()
            assert (info.value.code, str(info.value)) == (error.code, str(error))
            return False
        got = call_fast()
        assert got == expected
        written += got
        return True

    for index, body in enumerate(bodies):
        if index:
            if plain.continuation_segment is None:
                break
            plain.begin_continuation(decoder())
            fast.begin_continuation(decoder())
        for piece in cut(body):
            if not both(lambda p=piece: plain.feed(p), lambda p=piece: fast.feed_sse(p)):
                return written
    both(plain.close, fast.close_sse)
    both(plain.close, fast.close_sse)  # a second close is empty on both
    assert plain.event_counts == fast.event_counts
    return written


def sse_objects(written):
    events = SSEDecoder().feed(written)
    assert b"".join(encode_sse(json.loads(e.data)) for e in events) == written
    return [json.loads(e.data) for e in events]


@given(st.sampled_from(SCENARIOS), st.lists(st.integers(0, 10_000), max_size=12))
def test_feed_sse_equals_encoded_feed_on_fixtures(name, points):
    scenario = load_scenario(name)
    bodies = [scenario.upstream, *scenario.continuations]
    written = lockstep_sse(bodies, cutter(points), **scenario.translator_kwargs)
    for obj in sse_objects(written):
        assert_valid("openai.chunk", obj)


@given(
    kimi_streams(),
    st.lists(st.integers(0, 10_000), max_size=10),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["kimi", "\x00kimi-free-api text\x00", 'm"\u2028é']),
    st.sampled_from([None, "cid", "fp"]),
)
def test_feed_sse_equals_encoded_feed_on_generated_streams(body, points, silent, usage, model, ids):
    note(repr(body))
    written = lockstep_sse(
        [body],
        cutter(points),
        silent=silent,
        include_usage=usage,
        model=model,
        completion_id=None if ids is None else "cid",
        system_fingerprint="fp_1" if ids == "fp" else None,
    )
    for obj in sse_objects(written):
        assert_valid("openai.chunk", obj)


@given(kimi_streams())
def test_feed_sse_equals_encoded_feed_byte_by_byte(body):
    lockstep_sse([body], bytewise, completion_id=None)
