"""Properties of the Connect framing and decoder (style guide R9, R10, R11)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from schemas import load_schema
from tests.schema_check import assert_valid
from tests.test_connect_stream import SCENARIOS, decode, load_fixture, normalise
from translator import Finished, ReasoningDelta, RemoteProtocolError, TextDelta, UpstreamEvent
from translator.connect._frames import (
    DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_CAP,
)
from translator.connect._frames import Envelope, EnvelopeDecoder, encode_envelope
from translator.connect._stream import ConnectDecoder


@st.composite
def cuts(draw, length: int) -> list[int]:
    """Sorted read boundaries inside a body of `length` bytes."""
    if length < 2:
        return []
    return sorted(draw(st.sets(st.integers(1, length - 1), max_size=min(length - 1, 40))))


def normalised_or_error(data: bytes, boundaries=()):
    """The normalised events delivered before the stream ended or failed, and the error code."""
    decoder = ConnectDecoder()
    events: list[UpstreamEvent] = []
    start = 0
    try:
        for cut in [*boundaries, len(data)]:
            events += decoder.feed(data[start:cut])
            start = cut
        events += decoder.close()
    except RemoteProtocolError as exc:
        return normalise(events), exc.code
    return normalise(events), None


@pytest.mark.parametrize("name", SCENARIOS)
@given(data=st.data())
def test_fixture_cut_anywhere_gives_the_same_events(name, data):
    body, _, _ = load_fixture(name)
    boundaries = data.draw(cuts(len(body)))
    note(f"cuts={boundaries}")
    assert normalise(decode(body, boundaries)) == normalise(decode(body))


@pytest.mark.parametrize("name", SCENARIOS)
@given(data=st.data())
def test_fixture_cut_anywhere_gives_the_same_event_list(name, data):
    # Stronger than the normalised view: the decoder's events do not depend on reads at all,
    # because it only acts on whole envelopes.
    body, _, _ = load_fixture(name)
    boundaries = data.draw(cuts(len(body)))
    assert _events(body, boundaries) == _events(body, ())


def _events(body, boundaries):
    events = decode(body, boundaries)
    return [(type(e).__name__, repr(e)) for e in events]


frames_strategy = st.lists(st.tuples(st.sampled_from([0, 2]), st.binary(max_size=300)), max_size=8)


@given(frames=frames_strategy, data=st.data())
def test_envelopes_roundtrip_with_several_per_read(frames, data):
    body = b"".join(encode_envelope(p, end_stream=bool(f)) for f, p in frames)
    decoder = EnvelopeDecoder()
    out: list[Envelope] = []
    start = 0
    for cut in [*data.draw(cuts(len(body))), len(body)]:
        out += decoder.feed(body[start:cut])
        start = cut
    decoder.close()
    assert out == [Envelope(flags=f, payload=p) for f, p in frames]


@given(body=st.binary(max_size=400), data=st.data())
@example(body=b"\x00\x00\x00\x00\x02[]", data=None)
@example(body=b"\x00\xff\xff\xff\xff", data=None)
@example(body=b"\x02\x00\x00\x00\x02{}\x00", data=None)
def test_arbitrary_bytes_give_events_or_remote_protocol_error(body, data):
    boundaries = data.draw(cuts(len(body))) if data is not None else []
    # anything else (KeyError, TypeError, UnicodeDecodeError...) fails the test
    result = normalised_or_error(body, boundaries)
    assert result == normalised_or_error(body)


@st.composite
def mutated_fixture(draw):
    body = bytearray(load_fixture(draw(st.sampled_from(SCENARIOS)))[0])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(body) - 1))
        body[i] = draw(st.integers(0, 255))
    return bytes(body)


@given(body=mutated_fixture(), data=st.data())
def test_mutated_fixtures_give_events_or_remote_protocol_error(body, data):
    assert normalised_or_error(body, data.draw(cuts(len(body)))) == normalised_or_error(body)


@given(cap=st.integers(0, 2**20), excess=st.integers(1, 2**31), flags=st.sampled_from([0, 2]))
def test_declared_length_over_the_cap_fails_at_the_header(cap, excess, flags):
    decoder = ConnectDecoder(max_message_bytes=cap)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(struct.pack(">BI", flags, min(cap + excess, 2**32 - 1)))
    assert info.value.code == "frame_too_large"


# --- generated valid streams round-trip -------------------------------------------------------

text_st = st.text(st.characters(codec="utf-8"), max_size=12)
ops_st = st.lists(
    st.tuples(st.sampled_from(["text", "think"]), st.sampled_from(["0", "1"]), text_st),
    max_size=15,
)


@given(ops=ops_st, data=st.data())
def test_generated_block_updates_roundtrip(ops, data):
    """The first update of a block is a `set`, later ones `append`s; what comes out is exactly
    what went in, per kind, whatever the read boundaries."""
    seen: set[tuple[str, str]] = set()
    messages = []
    for field, block, piece in ops:
        op = "append" if (field, block) in seen else "set"
        seen.add((field, block))
        mask = f"block.{field}" + (".content" if op == "append" else "")
        messages.append({"op": op, "mask": mask, "block": {"id": block, field: {"content": piece}}})
    body = b"".join(encode_envelope(m) for m in messages) + encode_envelope({}, end_stream=True)
    events = decode(body, data.draw(cuts(len(body))))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "".join(
        p for f, _, p in ops if f == "text"
    )
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "".join(
        p for f, _, p in ops if f == "think"
    )


@given(prefix=text_st, grow=st.lists(text_st, max_size=6))
def test_growing_sets_emit_only_suffixes(prefix, grow):
    decoder = ConnectDecoder()
    content = prefix
    out: list[UpstreamEvent] = []
    for piece in ["", *grow]:
        content += piece
        message = {
            "op": "set",
            "mask": "block.text",
            "block": {"id": "1", "text": {"content": content}},
        }
        out += decoder.feed(encode_envelope(message))
    assert "".join(e.text for e in out if isinstance(e, TextDelta)) == content
    assert decoder.rewrites == 0


# hypothesis-jsonschema 0.23.1 cannot generate objects with the installed Hypothesis 6.170
# (`from_object_schema` calls the removed `cu.many(...).more()`), so the schema-contract property
# uses a hand-written strategy that covers every field the schema pins, and checks each generated
# message against the schema before decoding it.

json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
short = st.text(max_size=6)


def obj(**optional):
    return st.fixed_dictionaries({}, optional=optional)


content = obj(content=short)
card = obj(
    title=short,
    url=st.sampled_from(["", "https://a.example/", "https://b.example/"]) | short,
    siteName=short,
    snippet=short,
    publishTime=short,
)
chunk = obj(id=short, refIndex=short | st.integers(), base=card, searchResult=obj(base=card))
error = obj(
    code=st.sampled_from(["unauthenticated", "resource_exhausted", "unavailable", "internal"])
    | short,
    message=short,
    details=st.lists(
        obj(
            type=short,
            value=short,
            debug=obj(
                reason=st.sampled_from(["REASON_COMPLETION_OVERLOADED", "REASON_CONTENT_SENSITIVE"])
                | short,
                localizedMessage=obj(message=short),
                paywall=json_value,
            ),
        ),
        max_size=2,
    ),
)
stream_message = st.builds(
    lambda known, extra: {**extra, **known},
    obj(
        op=st.sampled_from(["set", "append", "init"]) | short,
        mask=st.sampled_from(
            [
                "block",
                "block.text",
                "block.think.content",
                "block.tool.args",
                "block.text,block.think",
                "message.status",
            ]
        )
        | short,
        eventOffset=st.integers(),
        chat=obj(id=short, name=short),
        block=obj(
            id=st.sampled_from(["0", "1"]),
            text=content,
            think=content,
            tool=st.dictionaries(short, json_value, max_size=2),
        ),
        message=obj(
            id=st.sampled_from(["a", "u"]) | short,
            role=st.sampled_from(["assistant", "user", "system"]),
            status=st.sampled_from(["MESSAGE_STATUS_COMPLETED"]) | short,
            refs=obj(searchChunks=st.lists(chunk, max_size=3)),
        ),
        done=st.dictionaries(short, json_value, max_size=1),
        heartbeat=json_value,
        error=error,
        metadata=st.dictionaries(short, json_value, max_size=1),
    ),
    st.dictionaries(
        st.text(min_size=1, max_size=6).filter(lambda k: k not in KNOWN), json_value, max_size=2
    ),
)
KNOWN = frozenset(load_schema("kimi.connect_message")["properties"])


@given(messages=st.lists(st.tuples(stream_message, st.booleans()), min_size=1, max_size=4))
def test_schema_valid_messages_always_decode(messages):
    """The schema is the contract: a sequence of messages valid under it never makes the
    decoder fail (an end-of-stream flag, if any, only on the last one)."""
    decoder = ConnectDecoder()
    events: list[UpstreamEvent] = []
    for i, (message, end) in enumerate(messages):
        assert_valid("kimi.connect_message", message)
        events += decoder.feed(encode_envelope(message, end_stream=end and i == len(messages) - 1))
    assert all(isinstance(e, UpstreamEvent) for e in events)
    assert sum(isinstance(e, Finished) for e in events) <= 1
    assert decoder.close() == []


# --- the fast path (plain deltas) is the exact path --------------------------------------------


class ExactOnly(ConnectDecoder):
    """The decoder with its plain-delta fast path switched off: every envelope takes the
    framing, the handler table and the typed readers."""

    def _fast(self, data):
        return [], 0


def per_call(decoder, pieces):
    """Per call: the events (type and fields) or the error it raised; then the rewrites."""
    calls = []
    for piece in [*pieces, None]:
        try:
            got = decoder.close() if piece is None else decoder.feed(piece)
            calls.append(("ok", [(type(e).__name__, repr(e)) for e in got]))
        except RemoteProtocolError as err:
            calls.append(("error", err.code, str(err)))
            break
    return calls, decoder.rewrites


_DELETE = object()
_FIELD = "<field>"  # stands for the delta's own field (text or think)
#: (path, new value) by kind: one change each that the fast path must notice (or still accept)
_PERTURBATIONS = [
    [(("op",), v) for v in ("set", "set", "init", None, 1)],
    [
        (("mask",), v)
        for v in (
            "block.text",
            "block.think",
            "block.text.content",
            "block",
            "block.tool",
            "block.text,block.think",
            " block.text.content",
            None,
            ["block.text.content"],
            _DELETE,
        )
    ],
    [(("block", "id"), v) for v in ("", None, 7, _DELETE)],
    [(("block", _FIELD), v) for v in (None, [], "x", {}, _DELETE)],
    [(("block", _FIELD, "content"), v) for v in ("", None, 3, ["a"], _DELETE)],
    [(("block",), []), (("block",), None)],
    [
        (("eventOffset",), 9),
        (("done",), {}),
        (("heartbeat",), {}),
        (("message",), {"id": "a", "role": "assistant", "status": "MESSAGE_STATUS_COMPLETED"}),
        (("chat",), {"id": "c1"}),
        (("error",), {"code": "unavailable"}),
    ],
]


def _perturbed(field, block_id, content, changes):
    """A plain delta message, with `changes` (from _PERTURBATIONS) applied."""
    message = {"op": "append", "mask": f"block.{field}.content"}
    message["block"] = {"id": block_id, field: {"content": content}}
    for path, value in changes:
        *outer, last = (field if key == _FIELD else key for key in path)
        holder = message
        for key in outer:
            holder = holder[key]
        if value is _DELETE:
            holder.pop(last, None)
        else:
            holder[last] = value
    return message


near_delta = st.builds(
    _perturbed,
    st.sampled_from(["text", "think"]),
    st.sampled_from(["1", "2"]),
    text_st,
    st.one_of(
        st.just(()), st.sampled_from(_PERTURBATIONS).flatmap(st.sampled_from).map(lambda c: (c,))
    ),
)
# (flags, payload): plain deltas and everything that looks almost like one
_near_envelope = st.tuples(st.just(0), near_delta.map(lambda m: encode_envelope(m)[5:]))
fast_envelope = st.one_of(
    _near_envelope,
    _near_envelope,
    _near_envelope,
    st.tuples(
        st.sampled_from([0, 0, 0, 2, 1, 4]),
        st.sampled_from(
            [
                b"{}",
                b' {"op":"append","mask":"block.text","block":{"id":"1","text":{"content":"a"}}}',
                b'{"op":"append","mask":"block.text","block":{"id":"1","text":{"content":"a"}}} ',
                b'{"op":"append","mask":"block.text","block":{"id":"1","text":{"content":"a"}}}x',
                b'{"op":"set","op":"append","mask":"block.text","block":{"id":"1","text":{"content":"b"}}}',
                b'{"op":"append","mask":"block.text","block":{"id":"1","text":{"content":"\\ud800"}}}',
                '{"op":"append","mask":"block.text","block":{"id":"1","text":{"content":"é"}}}'.encode(
                    "utf-16"
                ),
                b'{"op":"append","mask":"block.text","block":{"id":"1","text":{"content":"\xff"}}}',
                b"oops",
                b"",
                b"[]",
                b"[" * 3000 + b"]" * 3000,
                b'{"error":{"code":"unavailable"}}',
            ]
        ),
    ),
)


@settings(max_examples=max(400, settings.default.max_examples))  # cheap, and the space is wide
@given(
    envelopes=st.lists(fast_envelope, min_size=1, max_size=12),
    tail=st.sampled_from([b"", b"\x00\x00", b"\x00\x00\x00\x00\x09{}"]),
    cap=st.sampled_from([30, 60, 100, DEFAULT_CAP]),
    data=st.data(),
)
def test_fast_path_gives_the_exact_path_events_and_errors(envelopes, tail, cap, data):
    body = b"".join(struct.pack(">BI", f, len(p)) + p for f, p in envelopes) + tail
    boundaries = data.draw(cuts(len(body)))
    pieces = [body[a:b] for a, b in zip([0, *boundaries], [*boundaries, len(body)], strict=True)]
    expected = per_call(ExactOnly(max_message_bytes=cap), pieces)
    assert per_call(ConnectDecoder(max_message_bytes=cap), pieces) == expected
    # and the exact path itself does not depend on the reads
    whole = per_call(ExactOnly(max_message_bytes=cap), [body])
    assert [e for c in expected[0] if c[0] == "ok" for e in c[1]] == [
        e for c in whole[0] if c[0] == "ok" for e in c[1]
    ]


@pytest.mark.parametrize("field", ["text", "think"])
@pytest.mark.parametrize(
    "change", [c for kind in _PERTURBATIONS for c in kind], ids=lambda c: f"{c[0]}={c[1]!r}"
)
def test_every_perturbation_of_a_delta_decodes_as_on_the_exact_path(field, change):
    before = encode_envelope(_perturbed(field, "1", "ab", ()))
    odd = encode_envelope(_perturbed(field, "1", "abc", (change,)))
    after = encode_envelope(_perturbed(field, "1", "d", ()))
    for pieces in ([odd], [before + odd + after], [before, odd + after], [before + odd, after]):
        assert per_call(ConnectDecoder(), pieces) == per_call(ExactOnly(), pieces)
