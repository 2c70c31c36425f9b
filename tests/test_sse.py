"""The WHATWG SSE decoder and the one SSE encoder."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from translator._errors import RemoteProtocolError
from translator._sse import SSE_DONE, ServerSentEvent, SSEDecoder, encode_sse, encode_sse_comment


def decode(*pieces: bytes, max_bytes: int | None = None) -> list[ServerSentEvent]:
    dec = SSEDecoder() if max_bytes is None else SSEDecoder(max_bytes=max_bytes)
    out: list[ServerSentEvent] = []
    for piece in pieces:
        out += dec.feed(piece)
    out += dec.close()
    return out


def datas(*pieces: bytes) -> list[str]:
    return [e.data for e in decode(*pieces)]


def bytewise(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


# -- the spec's own examples (html.spec.whatwg.org, "Parsing an event stream") --------------


def test_spec_example_multiline_and_comment():
    body = b"data: YHOO\ndata: +2\ndata: 10\n\n: test stream\n\ndata: first event\nid: 1\n\n"
    events = decode(body)
    assert [e.data for e in events] == ["YHOO\n+2\n10", "first event"]
    assert [e.id for e in events] == ["", "1"]


def test_spec_example_id_persists_and_resets():
    body = b"data:first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
    events = decode(body)
    assert [(e.data, e.id) for e in events] == [
        ("first event", "1"),
        ("second event", ""),
        (" third event", ""),  # only ONE leading space is stripped
    ]


def test_spec_example_empty_data_lines():
    # "data" alone and "data:" are both a data field with an empty value.
    body = b"data\n\ndata\ndata\n\ndata:\n"
    assert datas(body) == ["", "\n"]  # the last event is not terminated: discarded


def test_spec_example_space_after_colon_is_optional():
    assert datas(b"data:test\n\ndata: test\n\n") == ["test", "test"]


def test_event_and_retry_fields():
    body = b"event: add\nretry: 1500\ndata: x\n\nretry: soon\ndata: y\n\n"
    events = decode(body)
    assert [(e.event, e.retry) for e in events] == [("add", 1500), ("message", 1500)]


def test_unknown_fields_and_nul_ids_are_ignored():
    events = decode(b"id: a\nfoo: bar\ndata: 1\n\nid: b\0c\ndata: 2\n\n")
    assert [(e.data, e.id) for e in events] == [("1", "a"), ("2", "a")]


def test_blank_line_without_data_dispatches_nothing():
    assert decode(b"event: x\n\n: only a comment\n\n\n\n") == []


def test_event_type_resets_after_dispatch():
    events = decode(b"event: a\ndata: 1\n\ndata: 2\n\n")
    assert [e.event for e in events] == ["a", "message"]


# -- line ends across feeds -----------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_end(eol):
    body = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert datas(body) == ["a\nb", "c"]
    assert datas(*bytewise(body)) == ["a\nb", "c"]


def test_cr_at_end_of_feed_and_lf_at_start_of_next_is_one_line_end():
    assert datas(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == ["a\nb"]


def test_cr_then_empty_feed_then_lf():
    assert datas(b"data: a\r", b"", b"\n\r\n") == ["a"]


def test_cr_then_cr_is_a_blank_line():
    assert datas(b"data: a\r", b"\r") == ["a"]


def test_u2028_and_form_feed_are_not_line_ends():
    text = "data: a\u2028b\x0cc\x1cd\n\n"
    assert datas(text.encode()) == ["a\u2028b\x0cc\x1cd"]


# -- BOM and UTF-8 --------------------------------------------------------------------------


def test_leading_bom_is_ignored_even_when_split():
    body = "\ufeffdata: x\n\n".encode()
    assert datas(body) == ["x"]
    assert datas(*bytewise(body)) == ["x"]


def test_only_the_first_bom_is_ignored():
    body = "\ufeff\ufeffdata: x\n\n".encode()
    assert datas(body) == []  # the second BOM is part of the field name "\ufeffdata"


def test_short_stream_that_is_not_a_bom():
    assert datas(b"\n", b"data: y\n\n") == ["y"]
    assert datas(b"\xef", b"\xbb") == []  # a BOM prefix then the end: nothing


def test_utf8_split_inside_sequences():
    body = "data: 你好🙂\n\n".encode()
    assert datas(*bytewise(body)) == ["你好🙂"]


def test_invalid_utf8_is_a_protocol_error():
    with pytest.raises(RemoteProtocolError, match="invalid UTF-8") as info:
        decode(b"data: \xff\xfe\n\n")
    assert info.value.status == 502
    assert info.value.code == "upstream_protocol_error"


def test_truncated_utf8_at_the_end_is_discarded_with_the_unterminated_event():
    assert decode(b"data: ok\n\ndata: \xe4\xbd") == [ServerSentEvent(data="ok")]


def test_error_after_events_in_one_feed_is_raised_by_the_next_call():
    dec = SSEDecoder()
    assert [e.data for e in dec.feed(b"data: ok\n\ndata: \xff\n\n")] == ["ok"]
    with pytest.raises(RemoteProtocolError):
        dec.feed(b"data: more\n\n")
    with pytest.raises(RemoteProtocolError):
        dec.close()


# -- limits ---------------------------------------------------------------------------------


def test_line_longer_than_the_cap_while_buffering():
    dec = SSEDecoder(max_bytes=16)
    dec.feed(b"data: 0123456789")
    with pytest.raises(RemoteProtocolError, match="longer than 16 bytes"):
        dec.feed(b"abc")


def test_line_longer_than_the_cap_in_one_piece():
    with pytest.raises(RemoteProtocolError, match="longer than 16 bytes"):
        decode(b"data: 0123456789abcdef\n\n", max_bytes=16)


def test_event_larger_than_the_cap_over_many_lines():
    with pytest.raises(RemoteProtocolError, match="larger than 16 bytes"):
        decode(b"data: 12345\n" * 4 + b"\n", max_bytes=16)


def test_cap_resets_after_dispatch():
    assert datas(b"data: 12345\n\n" * 4) == ["12345"] * 4


# -- the encoder ----------------------------------------------------------------------------


def test_encode_sse_is_compact_utf8_json():
    assert (
        encode_sse({"a": "你好", "b": [1, None]}) == 'data: {"a":"你好","b":[1,null]}\n\n'.encode()
    )


def test_sse_done():
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_encode_sse_comment():
    assert encode_sse_comment() == b": keep-alive\n\n"
    assert encode_sse_comment("a\nb\r\nc") == b": a b c\n\n"
    assert decode(encode_sse_comment("x\ny")) == []


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=8,
    )
)
def test_encoder_round_trips_through_the_decoder(obj):
    (event,) = decode(encode_sse(obj))
    assert json.loads(event.data) == obj


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_arbitrary_bytes_give_events_or_protocol_error(body, cuts):
    dec = SSEDecoder(max_bytes=64)
    points = sorted({c for c in cuts if c <= len(body)})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    try:
        for piece in pieces:
            for ev in dec.feed(piece):
                assert isinstance(ev.data, str)
        dec.close()
    except RemoteProtocolError:
        pass


# -- the fast path (LF-only feeds) is the exact path, and feed_data is feed's data ------------


class ExactOnly(SSEDecoder):
    """The decoder with its one-pass fast path switched off: the line-by-line reference."""

    def _fast(self, buf, events):
        return False


def outcome(decoder, pieces, method="feed"):
    """Per call: the events (as tuples, or data strings) or the error it raised."""
    calls = []
    for piece in [*pieces, None]:
        try:
            if piece is None:
                calls.append(("ok", decoder.close()))
            else:
                got = getattr(decoder, method)(piece)
                calls.append(("ok", [e if isinstance(e, str) else e.data for e in got]))
                if method == "feed":
                    calls[-1] = ("ok", [(e.data, e.event, e.id, e.retry) for e in got])
        except RemoteProtocolError as err:
            calls.append(("error", str(err)))
            break
    return calls


_line = st.sampled_from(
    [
        b"data: a",
        b"data:b",
        b"data",
        "data: 你好🙂".encode(),
        "data:é".encode(),
        b"data: 0123456789abcdef0123",
        b"",
        b"",
        b": comment",
        b"event: add",
        b"id: 7",
        b"retry: 10",
        b"other: x",
        b"data: \xff",
        b"\xef\xbb\xbfdata: bom",
    ]
)


@st.composite
def lf_bodies(draw):
    lines = draw(st.lists(_line, max_size=16))
    body = b"".join(line + b"\n" for line in lines)
    if draw(st.booleans()):
        body += draw(_line)  # an unterminated last line
    if draw(st.integers(0, 4)) == 0:
        body = body.replace(b"\n", b"\r\n", 1)
    return body


@given(
    lf_bodies(),
    st.lists(st.integers(0, 400), max_size=8),
    st.sampled_from([8, 16, 24, 40, 10_000]),
)
def test_fast_path_gives_the_exact_path_events_and_errors(body, cuts, max_bytes):
    points = sorted({c for c in cuts if c <= len(body)})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    expected = outcome(ExactOnly(max_bytes=max_bytes), pieces)
    assert outcome(SSEDecoder(max_bytes=max_bytes), pieces) == expected
    data_only = [
        (kind, [e[0] for e in value] if kind == "ok" else value) for kind, value in expected
    ]
    assert outcome(SSEDecoder(max_bytes=max_bytes), pieces, "feed_data") == data_only


def test_event_size_limit_counts_bytes_across_fast_feeds():
    # "data: 你" is 9 bytes: two lines are 18 > 16, though only 14 characters.
    for decoder in (SSEDecoder(max_bytes=16), ExactOnly(max_bytes=16)):
        decoder.feed("data: 你\n".encode())
        with pytest.raises(RemoteProtocolError, match="larger than 16 bytes"):
            decoder.feed("data: 你\n\n".encode())


def test_event_continued_over_fast_feeds_without_a_blank_line():
    decoder = SSEDecoder(max_bytes=30)
    assert decoder.feed(b"data: 12345\n") == []
    assert decoder.feed(b"data: 12345\n") == []  # 22 bytes of this event so far
    with pytest.raises(RemoteProtocolError, match="larger than 30 bytes"):
        decoder.feed(b"data: 123456789\n\n")


def test_bad_utf8_in_a_fast_feed_comes_after_the_events_before_it():
    decoder = SSEDecoder()
    assert decoder.feed_data(b"data: ok\n\ndata: \xff\n\n") == ["ok"]
    with pytest.raises(RemoteProtocolError, match="invalid UTF-8"):
        decoder.feed_data(b"data: more\n\n")


def test_pending_event_size_counts_only_its_data_lines():
    # The event continues into the next feed; its other fields do not count toward the limit.
    last = b"data: " + b"x" * 43 + b"\n\n"  # 49 bytes of data line: 11 + 49 = 60, the limit
    for decoder in (SSEDecoder(max_bytes=60), ExactOnly(max_bytes=60)):
        assert decoder.feed(b"data: 12345\nevent: some-long-name\n") == []
        assert [(e.data, e.event) for e in decoder.feed(last)] == [
            ("12345\n" + "x" * 43, "some-long-name")
        ]
