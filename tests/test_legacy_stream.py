"""LegacyDecoder: Kimi's legacy SSE events → UpstreamEvents."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.schema_check import assert_valid
from translator._errors import RemoteProtocolError
from translator._upstream import (
    ContentFiltered,
    Finished,
    LengthStop,
    MessageId,
    Noise,
    ReasoningDelta,
    SearchResult,
    TextDelta,
    Unknown,
    UpstreamEvent,
    UpstreamFailure,
)
from translator.legacy._stream import KimiEvent, LegacyDecoder, parse_kimi_event


def frame(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def events_of(*objs: object) -> list[UpstreamEvent]:
    for obj in objs:
        if isinstance(obj, dict):
            assert_valid("kimi.event", obj)
    dec = LegacyDecoder()
    out = dec.feed(b"".join(frame(o) for o in objs))
    return out + dec.close()


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"event": "cmpl", "text": "hi"}, [TextDelta(text="hi")]),
        ({"event": "cmpl", "text": ""}, [TextDelta(text="")]),
        ({"event": "k1", "text": "hmm"}, [ReasoningDelta(text="hmm")]),
        ({"event": "k1", "text": ""}, [Noise(kind="k1")]),
        ({"event": "k1", "summary": "done thinking"}, [Noise(kind="k1")]),
        ({"event": "k1", "type": "search_targets", "search_targets": ["x"]}, [Noise(kind="k1")]),
        ({"event": "req", "id": "seg1", "group_id": "g"}, [MessageId(message_id="seg1")]),
        ({"event": "resp", "id": "r1"}, [Noise(kind="resp")]),
        ({"event": "length"}, [LengthStop()]),
        ({"event": "all_done"}, [Finished()]),
        ({"event": "done"}, [Noise(kind="done")]),
        ({"event": "ping"}, [Noise(kind="ping")]),
        ({"event": "rename", "text": "title"}, [Noise(kind="rename")]),
        ({"event": "loading"}, [Noise(kind="loading")]),
        ({"event": "debug", "message": {}}, [Noise(kind="debug")]),
        ({"event": "chat_prompt", "text": "more?"}, [Noise(kind="chat_prompt")]),
        ({"event": "search_plus", "msg": {"type": "start"}}, [Noise(kind="search_plus")]),
        (
            {"event": "brand_new", "x": 1},
            [Unknown(kind="brand_new", payload='{"event": "brand_new", "x": 1}')],
        ),
    ],
)
def test_event_mapping(obj, expected):
    assert events_of(obj) == expected


def test_get_res_search_result():
    msg = {
        "type": "get_res",
        "title": "T",
        "url": "https://a.example/",
        "site_name": "a",
        "snippet": "s",
        "date": "2024-01-01",
    }
    assert events_of({"event": "search_plus", "msg": msg}) == [
        SearchResult(title="T", url="https://a.example/", site_name="a", snippet="s")
    ]


def test_ref_docs_and_k1_results_map_fields_and_dedupe_by_url():
    events = events_of(
        {"event": "search_plus", "msg": {"type": "get_res", "url": "https://a/"}},
        {"event": "search_plus", "msg": {"type": "get_res", "url": "", "title": "no url"}},
        {
            "event": "k1",
            "type": "search_results",
            "search_results": [{"title": "B", "url": "https://b/"}, {"url": "https://a/"}],
        },
        {
            "event": "ref_docs",
            "ref_cards": [
                {"url": "https://b/", "title": "again"},
                {"url": "https://c/", "title": "C", "abstract": "abs", "source_label": "c.org"},
            ],
        },
    )
    assert events == [
        SearchResult(title="", url="https://a/"),
        SearchResult(title="B", url="https://b/"),
        SearchResult(title="C", url="https://c/", site_name="c.org", snippet="abs"),
    ]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"event": "error"}, ""),
        ({"event": "error", "error": {"error_type": "chat.forbidden", "message": "no"}}, "no"),
        ({"event": "error", "error_type": "chat.content_security", "message": "top"}, "top"),
    ],
)
def test_moderation_errors_are_content_filtered(obj, message):
    assert events_of(obj) == [ContentFiltered(message=message)]


def test_error_field_that_is_not_an_object_falls_back_to_the_top_level():
    body = frame({"event": "error", "error": "text", "message": "plain"})
    assert LegacyDecoder().feed(body) == [ContentFiltered(message="plain")]


@pytest.mark.parametrize(
    ("obj", "status", "code"),
    [
        ({"event": "error", "error": {"error_type": "auth.token.invalid"}}, 401, "invalid_api_key"),
        (
            {"event": "error", "error": {"error_type": "chat.user_stream_pushing", "message": "m"}},
            429,
            "stream_pushing",
        ),
        (
            {"event": "error", "error_type": "openai.completion.token_length_too_long"},
            400,
            "context_length_exceeded",
        ),
        (
            {"event": "error", "error": {"error_type": "openai.completion.stream"}},
            503,
            "upstream_overloaded",
        ),
        ({"event": "error", "error": {"error_type": "something.new"}}, 502, "upstream_error"),
    ],
)
def test_failures(obj, status, code):
    (event,) = events_of(obj)
    assert isinstance(event, UpstreamFailure)
    assert (event.error.status, event.error.code) == (status, code)
    assert_valid("openai.error", event.error.to_openai())


def test_empty_data_and_done_marker_are_noise():
    dec = LegacyDecoder()
    assert dec.feed(b"data:\n\ndata: [DONE]\n\ndata:  \n\n") == [
        Noise(kind="empty"),
        Noise(kind="[DONE]"),
        Noise(kind="empty"),
    ]


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        "[1, 2]",
        '"text"',
        '{"text": "no event"}',
        '{"event": 7}',
        '{"event": "cmpl"}',
        '{"event": "cmpl", "text": 3}',
        '{"event": "req"}',
        '{"event": "k1", "text": 5}',
        '{"event": "k1", "type": "search_results"}',
        '{"event": "k1", "type": "search_results", "search_results": ["x"]}',
        '{"event": "search_plus"}',
        '{"event": "search_plus", "msg": {"type": "get_res", "title": "no url"}}',
        '{"event": "search_plus", "msg": {"type": "get_res", "url": "u", "title": 1}}',
        '{"event": "ref_docs", "ref_cards": {}}',
        '{"event": "error", "error": {"error_type": 5}}',
    ],
)
def test_malformed_data_is_a_protocol_error(data):
    with pytest.raises(RemoteProtocolError) as info:
        LegacyDecoder().feed(f"data: {data}\n\n".encode())
    assert info.value.status == 502
    assert info.value.code == "upstream_protocol_error"


def test_error_after_events_is_raised_by_the_next_call():
    dec = LegacyDecoder()
    out = dec.feed(frame({"event": "cmpl", "text": "a"}) + b"data: nope\n\n")
    assert out == [TextDelta(text="a")]
    with pytest.raises(RemoteProtocolError, match="not JSON"):
        dec.feed(frame({"event": "cmpl", "text": "b"}))
    with pytest.raises(RemoteProtocolError, match="not JSON"):
        dec.close()


def test_sse_errors_surface_as_protocol_errors():
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        LegacyDecoder().feed(b"data: \xc3\x28\n\n")
    with pytest.raises(RemoteProtocolError, match="longer"):
        LegacyDecoder(max_bytes=8).feed(b"data: 123456789")


def test_parse_kimi_event():
    ev = parse_kimi_event('{"event": "cmpl", "text": "x"}')
    assert ev == KimiEvent(event="cmpl", fields={"event": "cmpl", "text": "x"}, raw=ev.raw)


_text = st.text(max_size=12)
_result = st.fixed_dictionaries(
    {"url": _text}, optional={"title": _text, "site_name": _text, "snippet": _text}
)
# hypothesis-jsonschema cannot generate objects with the installed Hypothesis (its `many` API
# changed), so the schema's event shapes are written as strategies here.
kimi_events = st.one_of(
    st.builds(lambda t: {"event": "cmpl", "text": t}, _text),
    st.builds(lambda t: {"event": "k1", "text": t}, _text),
    st.builds(
        lambda r: {"event": "k1", "type": "search_results", "search_results": r},
        st.lists(_result, max_size=3),
    ),
    st.builds(lambda m: {"event": "search_plus", "msg": {"type": "get_res", **m}}, _result),
    st.builds(lambda r: {"event": "ref_docs", "ref_cards": r}, st.lists(_result, max_size=3)),
    st.builds(lambda i: {"event": "req", "id": i}, _text),
    st.builds(
        lambda t, m: {"event": "error", "error": {"error_type": t, "message": m}},
        st.sampled_from(["chat.forbidden", "auth.token.invalid", "x.y", ""]),
        _text,
    ),
    st.builds(lambda e: {"event": e}, st.sampled_from(["length", "all_done", "ping", "new"])),
)


@given(kimi_events)
def test_schema_valid_events_decode(obj):
    # Every generated event is schema-valid and decodes to events, never an error.
    events = events_of(obj)
    assert all(isinstance(e, UpstreamEvent) for e in events)


@given(st.binary(max_size=400))
def test_arbitrary_bytes(body):
    dec = LegacyDecoder()
    try:
        events = dec.feed(body) + dec.close()
    except RemoteProtocolError:
        return
    assert all(isinstance(e, UpstreamEvent) for e in events)


@given(st.lists(st.text(max_size=30), max_size=6))
def test_arbitrary_data_lines(lines):
    body = "".join(f"data: {line}\n\n" for line in lines).encode()
    dec = LegacyDecoder()
    try:
        dec.feed(body)
        dec.close()
    except RemoteProtocolError:
        pass
