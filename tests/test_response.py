"""ResponseTranslator and its state machine, driven by scripted UpstreamEvents."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.schema_check import assert_valid
from translator._errors import LocalProtocolError, RemoteProtocolError
from translator._sse import encode_sse
from translator._upstream import (
    ContentFiltered,
    ConversationStarted,
    Finished,
    LengthStop,
    MessageId,
    Noise,
    ReasoningDelta,
    SearchResult,
    TextDelta,
    Unknown,
    UpstreamFailure,
)
from translator.chat._assembler import State
from translator.chat._response import ResponseTranslator


class Script:
    """A decoder that yields one prepared list of events per feed (and `tail` at close)."""

    def __init__(self, *batches, tail=(), fail_close=None, fail_feed=None):
        self.batches = list(batches)
        self.tail = list(tail)
        self.fail_close = fail_close
        self.fail_feed = fail_feed

    def feed(self, data):
        if self.fail_feed is not None:
            raise self.fail_feed
        return self.batches.pop(0) if self.batches else []

    def close(self):
        if self.fail_close is not None:
            raise self.fail_close
        return self.tail


def make(*batches, completion_id="cid", tail=(), **kwargs):
    kwargs.setdefault("model", "kimi")
    kwargs.setdefault("created", 100)
    return ResponseTranslator(Script(*batches, tail=tail), completion_id=completion_id, **kwargs)


def valid(chunks):
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
    return chunks


def feed_all(t, n):
    out = []
    for _ in range(n):
        out += t.feed(b".")
    return valid(out)


def deltas(chunks):
    return [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]


def text_of(chunks, key="content"):
    return "".join((d or {}).get(key) or "" for d in deltas(chunks))


def finish_of(chunks):
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]


FAIL = RemoteProtocolError("Kimi: busy (chat.user_stream_pushing)", status=429)


# -- chunk shape --------------------------------------------------------------------------------


def test_first_chunk_is_the_role_then_content_then_finish():
    t = make([TextDelta(text="Hi")], [Finished()])
    first = valid(t.feed(b"."))
    assert first == [
        {
            "id": "cid",
            "object": "chat.completion.chunk",
            "created": 100,
            "model": "kimi",
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        },
        {
            "id": "cid",
            "object": "chat.completion.chunk",
            "created": 100,
            "model": "kimi",
            "choices": [
                {"index": 0, "delta": {"content": "Hi"}, "logprobs": None, "finish_reason": None}
            ],
        },
    ]
    assert t.feed(b".") == []
    last = valid(t.close())
    assert deltas(last) == [{}]
    assert finish_of(last) == "stop"
    assert t.close() == []


def test_usage_null_on_every_chunk_then_a_usage_chunk():
    t = make([TextDelta(text="abcd"), Finished()], include_usage=True, prompt_text="12345678")
    chunks = valid(t.feed(b".") + t.close())
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}


def test_system_fingerprint_is_copied():
    t = make([TextDelta(text="x")], system_fingerprint="fp_1")
    assert {c["system_fingerprint"] for c in t.feed(b".")} == {"fp_1"}


def test_without_a_system_fingerprint_the_field_is_omitted_not_null():
    # the official spec types system_fingerprint as a string: null would fail typed clients
    t = make([TextDelta(text="x")], [Finished()], include_usage=True)
    chunks = valid(t.feed(b".") + t.feed(b".") + t.close())
    assert chunks
    assert all("system_fingerprint" not in c for c in chunks)


def test_deltas_of_one_kind_merge_within_a_feed_only():
    t = make(
        [TextDelta(text="a"), TextDelta(text="b"), ReasoningDelta(text="r"), TextDelta(text="c")],
        [TextDelta(text="d")],
    )
    first = t.feed(b".")
    assert deltas(first)[1:] == [{"content": "ab"}, {"reasoning_content": "r"}, {"content": "c"}]
    assert deltas(t.feed(b".")) == [{"content": "d"}]


def test_empty_deltas_write_nothing():
    t = make([TextDelta(text=""), ReasoningDelta(text="")])
    assert t.feed(b".") == []
    assert not t.started
    assert t.state is State.ANSWERING


# -- ids ------------------------------------------------------------------------------------


def test_conversation_id_becomes_the_chunk_id_when_none_was_given():
    t = make(
        [ConversationStarted(conversation_id="chat-1"), TextDelta(text="x")], completion_id=None
    )
    assert {c["id"] for c in t.feed(b".")} == {"chat-1"}
    assert t.conversation_id == "chat-1"


def test_fallback_id_when_content_comes_first():
    t = make(
        [TextDelta(text="x")],
        [ConversationStarted(conversation_id="late")],
        completion_id=None,
        fallback_id="chatcmpl-fixed",
    )
    chunks = t.feed(b".") + t.feed(b".") + t.close()
    assert {c["id"] for c in chunks} == {"chatcmpl-fixed"}
    assert t.conversation_id == "late"


def test_default_fallback_id_is_deterministic():
    def first_id(prompt):
        t = make([TextDelta(text="x")], completion_id=None, prompt_text=prompt)
        return t.feed(b".")[0]["id"]

    assert first_id("a") == first_id("a")
    assert first_id("a") != first_id("b")
    assert first_id("a").startswith("chatcmpl-")


def test_message_ids_for_the_assistant_only():
    t = make([MessageId(message_id="u1", role="user"), MessageId(message_id="a1")])
    t.feed(b".")
    assert t.last_message_id == "a1"
    t2 = make([MessageId(message_id="u1", role="user")])
    t2.feed(b".")
    assert t2.last_message_id is None


# -- starting late keeps failover possible -----------------------------------------------------


def test_quiet_events_do_not_start_the_answer():
    t = make(
        [MessageId(message_id="m"), Noise(kind="ping"), Unknown(kind="x")],
        [UpstreamFailure(error=FAIL)],
    )
    assert t.feed(b".") == []
    assert not t.started
    with pytest.raises(RemoteProtocolError) as info:
        t.feed(b".")
    assert info.value is FAIL
    assert not t.started
    assert t.state is State.ERROR


def test_error_after_an_empty_done_can_still_fail_over():
    t = make([Finished()], [UpstreamFailure(error=FAIL)])
    assert t.feed(b".") == []
    with pytest.raises(RemoteProtocolError):
        t.feed(b".")
    assert not t.started


def test_a_finished_answer_without_text_is_a_transient_error():
    # Kimi's throttling can look like an empty `done`: never an empty "stop" answer.
    t = make([MessageId(message_id="m"), Finished()])
    t.feed(b".")
    with pytest.raises(RemoteProtocolError) as info:
        t.close()
    assert (info.value.status, info.value.code) == (503, "upstream_empty_answer")
    assert not t.started
    assert_valid("openai.error", info.value.to_openai())


def test_a_filtered_answer_without_text_is_not_an_error():
    t = make([ContentFiltered(message="no"), Finished()])
    t.feed(b".")
    assert finish_of(valid(t.close())) == "content_filter"


# -- errors -------------------------------------------------------------------------------------


def test_failure_after_text_in_the_same_feed_is_raised_by_the_next_call():
    t = make([TextDelta(text="partial"), UpstreamFailure(error=FAIL)])
    chunks = valid(t.feed(b"."))
    assert text_of(chunks) == "partial"
    assert t.started
    with pytest.raises(RemoteProtocolError) as info:
        t.feed(b".")
    assert info.value is FAIL
    with pytest.raises(RemoteProtocolError):
        t.close()
    assert t.continuation_segment is None


def test_decoder_errors_put_the_translator_in_error():
    bad = RemoteProtocolError("bad bytes")
    t = ResponseTranslator(Script(fail_feed=bad), completion_id="c", model="m", created=1)
    with pytest.raises(RemoteProtocolError):
        t.feed(b".")
    assert t.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        t.feed(b".")


def test_decoder_close_errors_are_raised():
    t = ResponseTranslator(
        Script([TextDelta(text="x")], fail_close=RemoteProtocolError("cut")),
        completion_id="c",
        model="m",
        created=1,
    )
    t.feed(b".")
    with pytest.raises(RemoteProtocolError, match="cut"):
        t.close()


def test_failure_held_by_the_decoder_at_close_comes_after_its_chunks():
    t = make([TextDelta(text="a")], tail=[TextDelta(text="b"), UpstreamFailure(error=FAIL)])
    t.feed(b".")
    assert text_of(t.close()) == "b"
    with pytest.raises(RemoteProtocolError):
        t.close()


@pytest.mark.parametrize(
    ("before", "event", "state"),
    [
        ([Finished()], TextDelta(text="late"), "ENDED"),
        ([ContentFiltered()], ReasoningDelta(text="late"), "ENDED"),
        ([MessageId(message_id="s"), LengthStop()], TextDelta(text="x"), "CONTINUE"),
        ([MessageId(message_id="s"), LengthStop()], LengthStop(), "CONTINUE"),
        ([Finished()], LengthStop(), "ENDED"),
    ],
)
def test_unexpected_events_are_protocol_errors(before, event, state):
    t = make(before, [event])
    t.feed(b".")
    with pytest.raises(
        RemoteProtocolError, match=f"unexpected {type(event).__name__} in state {state}"
    ):
        t.feed(b".")
    assert t.state is State.ERROR


def test_close_without_an_answer():
    for batches in ([], [[Noise(kind="ping"), MessageId(message_id="m")]]):
        t = make(*batches)
        for _ in batches:
            t.feed(b".")
        with pytest.raises(RemoteProtocolError, match="without an answer") as info:
            t.close()
        assert (info.value.status, info.value.code) == (502, "upstream_empty")
        assert t.state is State.ERROR


def test_feed_after_close_is_a_protocol_error():
    t = make([TextDelta(text="x")])
    t.feed(b".")
    t.close()
    with pytest.raises(RemoteProtocolError, match="already closed"):
        t.feed(b".")


def test_error_chunk_is_the_openai_error_object():
    t = make()
    for err in (FAIL, LocalProtocolError("bad", param="messages")):
        chunk = t.error_chunk(err)
        assert chunk == err.to_openai()
        assert_valid("openai.error", chunk)


# -- finish reasons --------------------------------------------------------------------------------


def test_abrupt_end_after_content_is_a_well_formed_stop():
    t = make([TextDelta(text="cut")])
    t.feed(b".")
    chunks = valid(t.close())
    assert finish_of(chunks) == "stop"
    assert t.event_counts == {"TextDelta": 1, "abrupt_end": 1}


def test_content_filter():
    t = make([TextDelta(text="a"), ContentFiltered(message="no"), Finished()])
    assert t.finish_reason is None
    t.feed(b".")
    assert finish_of(valid(t.close())) == "content_filter"
    assert t.finish_reason == "content_filter"


def test_moderation_after_the_end_changes_the_finish_reason():
    t = make([TextDelta(text="a"), Finished(), ContentFiltered()])
    t.feed(b".")
    assert finish_of(t.close()) == "content_filter"


# -- length and continuation ----------------------------------------------------------------------


def test_length_then_continuation_is_one_answer():
    t = make([MessageId(message_id="seg1"), TextDelta(text="part one"), LengthStop(), Finished()])
    chunks = t.feed(b".")
    assert t.continuation_segment == "seg1"
    assert t.state is State.CONTINUE
    t.begin_continuation(Script([MessageId(message_id="seg2"), TextDelta(text=" two"), Finished()]))
    assert t.continuation_segment is None
    chunks += t.feed(b".") + t.close()
    valid(chunks)
    assert text_of(chunks) == "part one two"
    assert finish_of(chunks) == "stop"
    assert len([d for d in deltas(chunks) if d is not None and "role" in d]) == 1
    assert t.event_counts["continuation"] == 1
    assert t.last_message_id == "seg2"


def test_continuation_budget_runs_out():
    t = make([MessageId(message_id="s1"), TextDelta(text="a"), LengthStop()], max_continuations=1)
    t.feed(b".")
    t.begin_continuation(Script([MessageId(message_id="s2"), TextDelta(text="b"), LengthStop()]))
    t.feed(b".")
    assert t.continuation_segment is None
    assert finish_of(t.close()) == "length"


def test_length_without_a_segment_cannot_continue():
    t = make([TextDelta(text="a"), LengthStop()])
    t.feed(b".")
    assert t.continuation_segment is None
    assert finish_of(t.close()) == "length"


def test_length_not_continued_by_the_caller_ends_with_length():
    t = make([MessageId(message_id="s"), TextDelta(text="a"), LengthStop()])
    t.feed(b".")
    assert t.continuation_segment == "s"
    assert finish_of(valid(t.close())) == "length"


def test_length_before_any_text():
    t = make([MessageId(message_id="s"), LengthStop()])
    t.feed(b".")
    assert t.continuation_segment == "s"
    assert not t.started


def test_moderation_while_waiting_for_the_continuation():
    t = make([MessageId(message_id="s"), TextDelta(text="a"), LengthStop(), ContentFiltered()])
    t.feed(b".")
    assert t.continuation_segment is None
    assert finish_of(t.close()) == "content_filter"


def test_moderation_held_by_the_old_decoder_cancels_the_continuation():
    t = make(
        [MessageId(message_id="s"), TextDelta(text="a"), LengthStop()], tail=[ContentFiltered()]
    )
    t.feed(b".")
    t.begin_continuation(Script([TextDelta(text="never")]))
    assert t.state is State.ENDED
    assert finish_of(t.close()) == "content_filter"


def test_old_decoder_failing_at_continuation():
    t = ResponseTranslator(
        Script([MessageId(message_id="s"), LengthStop()], fail_close=RemoteProtocolError("cut")),
        completion_id="c",
        model="m",
        created=1,
    )
    t.feed(b".")
    with pytest.raises(RemoteProtocolError, match="cut"):
        t.begin_continuation(Script())


def test_begin_continuation_without_a_length_stop_is_a_caller_bug():
    t = make([TextDelta(text="a")])
    t.feed(b".")
    with pytest.raises(RuntimeError, match="ANSWERING"):
        t.begin_continuation(Script())


# -- search results -----------------------------------------------------------------------------


def sr(n, **kw):
    kw.setdefault("title", f"T{n}")
    return SearchResult(url=f"https://e.org/{n}", **kw)


def annotations_of(chunks):
    return chunks[-1]["choices"][0]["delta"].get("annotations")


def test_citations_before_and_after_the_answer():
    t = make([sr(1), sr(2), sr(1), TextDelta(text="Answer [^1^]"), sr(3), Finished()])
    chunks = valid(t.feed(b".") + t.close())
    content = text_of(chunks)
    assert content == (
        "1. [T1](https://e.org/1)\n2. [T2](https://e.org/2)\n\nAnswer [^1^]\n\n"
        "3. [T3](https://e.org/3)\n"
    )
    spans = [
        content[a["url_citation"]["start_index"] : a["url_citation"]["end_index"]]
        for a in annotations_of(chunks)
    ]
    assert spans == ["[T1](https://e.org/1)", "[T2](https://e.org/2)", "[T3](https://e.org/3)"]


def test_late_citation_block_after_a_trailing_newline():
    t = make([TextDelta(text="Answer\n"), sr(1)])
    t.feed(b".")
    assert text_of(t.close()) == "\n1. [T1](https://e.org/1)\n"


def test_citation_titles_and_urls_are_escaped():
    t = make(
        [
            SearchResult(title="a [b]\nc\\", url="https://e.org/x (1)"),
            SearchResult(title="", site_name="Site", url="https://e.org/s"),
            SearchResult(title="", url="https://e.org/<u>"),
        ]
    )
    chunks = t.feed(b".") + t.close()
    assert text_of(chunks) == (
        "1. [a \\[b\\] c\\\\](https://e.org/x%20%281%29)\n"
        "2. [Site](https://e.org/s)\n"
        "3. [https://e.org/<u>](https://e.org/%3Cu%3E)\n"
    )
    titles = [a["url_citation"]["title"] for a in annotations_of(chunks)]
    assert titles == ["a [b]\nc\\", "Site", "https://e.org/<u>"]


def test_silent_search_only_annotates():
    t = make([sr(1), TextDelta(text="x"), sr(2), sr(2)], silent=True)
    chunks = valid(t.feed(b".") + t.close())
    assert text_of(chunks) == "x"
    assert [
        (a["url_citation"]["start_index"], a["url_citation"]["end_index"])
        for a in annotations_of(chunks)
    ] == [(0, 0), (0, 0)]


def test_results_without_url_are_not_cited():
    t = make([SearchResult(title="x", url=""), TextDelta(text="a")])
    chunks = valid(t.feed(b".") + t.close())
    assert text_of(chunks) == "a"
    assert annotations_of(chunks) is None
    assert t.event_counts["SearchResult"] == 1


def test_silent_search_alone_does_not_start_the_answer():
    t = make([sr(1)], silent=True)
    assert t.feed(b".") == []
    assert not t.started


def test_reasoning_content():
    t = make([ReasoningDelta(text="hmm"), TextDelta(text="ok"), Finished()])
    chunks = valid(t.feed(b".") + t.close())
    assert text_of(chunks, "reasoning_content") == "hmm"
    assert text_of(chunks) == "ok"


# -- the transition table is total ---------------------------------------------------------------

PREFIXES = {
    "IDLE": [],
    "ANSWERING": [TextDelta(text="a")],
    "CONTINUE": [MessageId(message_id="s"), LengthStop()],
    "ENDED": [Finished()],
}
EVENTS = [
    TextDelta(text="t"),
    ReasoningDelta(text="r"),
    sr(9),
    ConversationStarted(conversation_id="c"),
    MessageId(message_id="m"),
    LengthStop(),
    ContentFiltered(),
    UpstreamFailure(error=FAIL),
    Finished(),
    Noise(kind="n"),
    Unknown(kind="u"),
]


@given(st.sampled_from(sorted(PREFIXES)), st.lists(st.sampled_from(EVENTS), max_size=4))
def test_any_event_in_any_state_lands_in_a_state_or_raises_into_error(state, events):
    t = make(PREFIXES[state], *([e] for e in events))
    t.feed(b".")
    assert t.state.name == state
    for _ in events:
        try:
            valid(t.feed(b"."))
        except RemoteProtocolError:
            assert t.state is State.ERROR
            return
        assert t.state in {State.IDLE, State.ANSWERING, State.CONTINUE, State.ENDED}
    try:
        valid(t.close())
    except RemoteProtocolError:
        assert t.state is State.ERROR
    else:
        assert t.state is State.CLOSED


# -- feed_sse / close_sse -----------------------------------------------------------------------


def sse_pair(*batches, **kwargs):
    """Two translators over the same script: chunks encoded one by one, and feed_sse bytes."""
    plain, fast = make(*batches, **kwargs), make(*batches, **kwargs)
    expected = [b"".join(map(encode_sse, valid(plain.feed(b".")))) for _ in batches]
    expected.append(b"".join(map(encode_sse, valid(plain.close()))))
    got = [fast.feed_sse(b".") for _ in batches] + [fast.close_sse()]
    return expected, got


def test_feed_sse_is_the_encoded_chunks_of_feed():
    expected, got = sse_pair(
        [TextDelta(text='a"\n你'), TextDelta(text="b"), ReasoningDelta(text="r\u2028")],
        [SearchResult(title="t", url="https://a.example/"), TextDelta(text="c")],
        [TextDelta(text="🙂\x00\\")],
        include_usage=True,
        system_fingerprint="fp",
    )
    assert got == expected
    assert got[0].startswith(b'data: {"id":"cid","object":"chat.completion.chunk"')
    fast = make([TextDelta(text="a"), ReasoningDelta(text="r")], [TextDelta(text="b")])
    fast.feed_sse(b".")
    assert fast.content == "a"
    fast.feed_sse(b".")
    fast.close_sse()
    assert fast.content == "ab"
    assert b'"content":"a\\"\\n\xe4\xbd\xa0b"' in got[0]


def test_feed_sse_falls_back_to_the_encoder_when_the_template_is_ambiguous():
    # The model name is the text marker: the template cannot be cut, encode_sse is used.
    expected, got = sse_pair(
        [TextDelta(text="x")], [TextDelta(text="y")], model="\x00kimi-free-api text\x00"
    )
    assert got == expected
    assert b'"content":"y"' in got[1]


def test_feed_sse_errors_as_feed_does():
    t = make([TextDelta(text="a"), UpstreamFailure(error=FAIL)])
    assert b'"content":"a"' in t.feed_sse(b".")
    with pytest.raises(RemoteProtocolError, match="busy"):
        t.feed_sse(b".")
    with pytest.raises(RemoteProtocolError, match="busy"):
        t.close_sse()


def test_chunks_are_fresh_dicts_and_close_sse_twice():
    t = make([TextDelta(text="a")], [TextDelta(text="b")])
    first = t.feed(b".")
    first[1]["choices"][0]["delta"]["content"] = "changed"
    first[0]["id"] = "changed"
    assert deltas(t.feed(b".")) == [{"content": "b"}]
    assert b"changed" not in t.close_sse()
    assert t.close_sse() == b""
