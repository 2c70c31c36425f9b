from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.schema_check import assert_valid
from translator import (
    ContentFiltered,
    ConversationStarted,
    Finished,
    MessageId,
    Noise,
    ReasoningDelta,
    RemoteProtocolError,
    SearchResult,
    TextDelta,
    Unknown,
    UpstreamFailure,
)
from translator.connect._frames import EnvelopeDecoder, encode_envelope
from translator.connect._stream import ConnectDecoder, connect_error

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "connect"
SCENARIOS = sorted(p.name for p in FIXTURES.iterdir() if (p / "upstream.bin").exists())


def load_fixture(name: str) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    folder = FIXTURES / name
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    return (folder / "upstream.bin").read_bytes(), meta, expected


def normalise(events) -> dict[str, Any]:
    """Events → the comparable shape of expected.json (chunk boundaries do not matter)."""
    out: dict[str, Any] = {
        "text": "",
        "reasoning": "",
        "conversation_id": None,
        "message_ids": [],
        "search_results": [],
        "finished": 0,
        "failure": None,
        "content_filtered": None,
        "noise": Counter(),
        "unknown": [],
    }
    for ev in events:
        match ev:
            case TextDelta(text=t):
                assert t, "empty deltas are never emitted"
                out["text"] += t
            case ReasoningDelta(text=t):
                assert t
                out["reasoning"] += t
            case ConversationStarted(conversation_id=cid):
                out["conversation_id"] = cid
            case MessageId(message_id=mid, role=role):
                out["message_ids"].append([role, mid])
            case SearchResult():
                out["search_results"].append(
                    {
                        "title": ev.title,
                        "url": ev.url,
                        "site_name": ev.site_name,
                        "snippet": ev.snippet,
                    }
                )
            case Finished():
                out["finished"] += 1
            case UpstreamFailure(error=err):
                out["failure"] = {
                    "status": err.status,
                    "type": err.type,
                    "code": err.code,
                    "message": err.message,
                }
            case ContentFiltered(message=m):
                out["content_filtered"] = m
            case Noise(kind=k):
                out["noise"][k] += 1
            case Unknown(kind=k):
                out["unknown"].append(k)
            case _:
                raise AssertionError(ev)
    out["noise"] = dict(out["noise"])
    return out


def decode(data: bytes, cuts=()) -> list:
    decoder = ConnectDecoder()
    events = []
    start = 0
    for cut in [*cuts, len(data)]:
        events += decoder.feed(data[start:cut])
        start = cut
    events += decoder.close()
    return events


def assert_matches(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    # `answer_error` is the translator's verdict on a cleanly decoded stream, not the decoder's.
    expected = {k: v for k, v in expected.items() if k != "answer_error"}
    failure = expected.get("failure")
    if failure is not None:
        got = actual.pop("failure")
        assert got is not None
        assert failure["message_contains"] in got["message"]
        assert {k: got[k] for k in ("status", "type", "code")} == {
            k: failure[k] for k in ("status", "type", "code")
        }
        expected = {k: v for k, v in expected.items() if k != "failure"}
    assert actual == expected


@pytest.mark.parametrize("name", SCENARIOS)
def test_fixture_whole(name):
    data, _, expected = load_fixture(name)
    assert_matches(normalise(decode(data)), expected)


@pytest.mark.parametrize("name", SCENARIOS)
def test_fixture_byte_at_a_time(name):
    data, _, expected = load_fixture(name)
    assert_matches(normalise(decode(data, range(1, len(data)))), expected)


@pytest.mark.parametrize("name", [n for n in SCENARIOS if (FIXTURES / n / "splits.json").exists()])
def test_fixture_recorded_splits(name):
    data, _, expected = load_fixture(name)
    cuts = json.loads((FIXTURES / name / "splits.json").read_text())
    assert cuts == sorted(cuts)
    assert cuts[-1] < len(data)
    assert_matches(normalise(decode(data, cuts)), expected)


@pytest.mark.parametrize("name", SCENARIOS)
def test_fixture_bytes_match_frames_and_schema(name):
    data, meta, _ = load_fixture(name)
    if "synthesized" in meta["source"]:
        rebuilt = b"".join(encode_envelope(m, end_stream=bool(f & 2)) for f, m in meta["frames"])
        assert rebuilt == data
    else:
        # a capture (`kimi-free-api replay --save-fixture`): its bytes are Kimi's own JSON
        assert meta["source"].startswith("captured")
        read = [[e.flags, json.loads(e.payload)] for e in EnvelopeDecoder().feed(data)]
        assert read == meta["frames"]
    for _, message in meta["frames"]:
        assert_valid("kimi.connect_message", message)


def test_fixture_set_is_complete():
    required = {
        "plain",
        "thinking",
        "search",
        "error_before_content",
        "error_after_content",
        "paywall",
        "done_without_content",
        "heartbeats_unknown",
        "split_frame",
        "utf8_split",
    }
    assert required <= set(SCENARIOS)
    assert (FIXTURES / "README.md").exists()


# --- single messages -------------------------------------------------------------------------


def events_of(*messages, trailer=None):
    data = b"".join(encode_envelope(m) for m in messages)
    if trailer is not None:
        data += encode_envelope(trailer, end_stream=True)
    return decode(data)


def test_finished_at_most_once():
    completed = {"message": {"id": "a", "role": "assistant", "status": "MESSAGE_STATUS_COMPLETED"}}
    events = events_of({"done": {}}, completed, {"done": {}})
    assert events.count(Finished()) == 1
    assert events == [Finished(), MessageId(message_id="a"), Noise(kind="done")]


def test_status_without_known_role_is_not_completion():
    # a message updated by id only, before we saw its role, cannot be called the answer
    events = events_of({"message": {"id": "x", "status": "MESSAGE_STATUS_COMPLETED"}})
    assert events == [Noise(kind="message")]
    events = events_of(
        {"message": {"id": "u", "role": "user", "status": "MESSAGE_STATUS_COMPLETED"}}
    )
    assert events == [MessageId(message_id="u", role="user")]


def test_new_assistant_message_id_reported_again():
    events = events_of(
        {"message": {"id": "a1", "role": "assistant"}},
        {"message": {"id": "a2", "role": "assistant"}},
    )
    assert events == [MessageId(message_id="a1"), MessageId(message_id="a2")]


def test_chat_without_id_and_name_default():
    assert events_of({"chat": {"name": "x"}}) == [Noise(kind="chat")]
    assert events_of({"chat": {"id": "c1"}}) == [ConversationStarted(conversation_id="c1")]


@pytest.mark.parametrize(
    ("mask", "block", "expected"),
    [
        (None, {"text": {"content": "a"}}, [TextDelta(text="a")]),
        (
            "block",
            {"think": {"content": "t"}, "text": {"content": "a"}},
            [TextDelta(text="a"), ReasoningDelta(text="t")],
        ),
        (
            "block.text,block.think",
            {"think": {"content": "t"}, "text": {"content": "a"}},
            [TextDelta(text="a"), ReasoningDelta(text="t")],
        ),
        ("block.text, block.text.content", {"text": {"content": "a"}}, [TextDelta(text="a")]),
        ("message.status", {"text": {"content": "a"}}, []),
        ("block.text", {"text": None}, []),
        ("block.text", {"text": {}}, []),
        ("block.tool.contents", {"tool": {"contents": []}}, [Noise(kind="tool")]),
    ],
)
def test_masks(mask, block, expected):
    message = {"op": "append", "block": block}
    if mask is not None:
        message["mask"] = mask
    assert events_of(message) == expected


def test_unknown_op_and_block_field():
    (ev,) = events_of({"op": "init", "mask": "block.text", "block": {"text": {"content": "q"}}})
    assert isinstance(ev, Unknown)
    assert ev.kind == "op:init"
    assert '"q"' in ev.payload
    (ev,) = events_of({"op": "set", "mask": "block.stage", "block": {}})
    assert ev.kind == "block.stage"


def test_set_semantics_per_block_and_rewrites():
    decoder = ConnectDecoder()

    def feed(op, content, block="1", field="text"):
        return decoder.feed(
            encode_envelope(
                {
                    "op": op,
                    "mask": f"block.{field}",
                    "block": {"id": block, field: {"content": content}},
                }
            )
        )

    assert feed("set", "ab") == [TextDelta(text="ab")]
    assert feed("set", "ab") == []
    assert feed("set", "abc") == [TextDelta(text="c")]
    assert feed("set", "xyz") == [Noise(kind="rewrite")]
    assert feed("set", "") == [Noise(kind="rewrite")]
    assert decoder.rewrites == 2
    assert feed("append", "d") == [TextDelta(text="d")]
    assert feed("set", "abcde") == [TextDelta(text="e")]
    # other block, and the same id for thinking, are separate texts
    assert feed("set", "ab", block="2") == [TextDelta(text="ab")]
    assert feed("set", "ab", field="think") == [ReasoningDelta(text="ab")]
    assert feed("append", "") == []


def test_search_chunk_shapes():
    card = {"title": "T", "url": "https://a.example/"}
    events = events_of(
        {
            "message": {
                "refs": {
                    "searchChunks": [
                        {"base": card},
                        {
                            "searchResult": {
                                "base": {**card, "url": "https://b.example/", "siteName": "b"}
                            }
                        },
                        {"base": {"title": "no url"}},
                        {"id": "empty"},
                    ]
                }
            }
        }
    )
    assert events == [
        SearchResult(title="T", url="https://a.example/"),
        SearchResult(title="T", url="https://b.example/", site_name="b"),
    ]
    assert events_of({"message": {"refs": {}}}) == [Noise(kind="message")]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ({}, "empty"),
        ({"eventOffset": 3}, "eventOffset"),
        ({"op": "set", "mask": "x", "eventOffset": 1, "x": {}}, "x"),
        ({"zeta": 1, "alpha": 2}, "zeta"),
    ],
)
def test_unknown_messages_are_named_by_their_content_key(message, kind):
    (ev,) = events_of(message)
    assert ev == Unknown(kind=kind, payload=json.dumps(message, separators=(",", ":")))


def test_unknown_payload_is_clipped():
    (ev,) = events_of({"big": "x" * 5000})
    assert isinstance(ev, Unknown)
    assert len(ev.payload) == 1001
    assert ev.payload.endswith("…")


def test_heartbeat_is_noise_in_any_shape():
    assert events_of({"heartbeat": None}) == [Noise(kind="heartbeat")]


def test_end_of_stream_trailers():
    assert events_of(trailer={}) == []
    assert events_of(trailer={"error": None, "metadata": {"a": ["b"]}}) == []
    (ev,) = events_of(trailer={"error": {"code": "unauthenticated", "message": "token expired"}})
    assert isinstance(ev, UpstreamFailure)
    assert ev.error.status == 401
    assert ev.error.type == "authentication_error"
    assert "token expired" in ev.error.message


@pytest.mark.parametrize(
    ("error", "status", "type_", "code"),
    [
        ({"code": "unauthenticated"}, 401, "authentication_error", "unauthenticated"),
        ({"code": "permission_denied"}, 401, "authentication_error", "permission_denied"),
        ({"code": "resource_exhausted"}, 429, "rate_limit_error", "resource_exhausted"),
        (
            {"code": "resource_exhausted", "details": [{"debug": {"paywall": False}}]},
            429,
            "rate_limit_error",
            "resource_exhausted",
        ),
        (
            {"code": "resource_exhausted", "details": [{"debug": {"paywall": {}}}]},
            402,
            "insufficient_quota",
            "resource_exhausted",
        ),
        ({"code": "unavailable"}, 503, "server_error", "unavailable"),
        ({"code": "deadline_exceeded"}, 503, "server_error", "deadline_exceeded"),
        (
            {
                "code": "internal",
                "details": [{"debug": {"reason": "REASON_COMPLETION_OVERLOADED"}}],
            },
            503,
            "server_error",
            "internal",
        ),
        ({"code": "internal"}, 502, "upstream_error", "internal"),
        ({}, 502, "upstream_error", "unknown"),
        (
            {"code": "invalid_argument", "details": [{"type": "x", "value": "AAA"}]},
            502,
            "upstream_error",
            "invalid_argument",
        ),
    ],
)
def test_error_mapping(error, status, type_, code):
    (ev,) = events_of({"error": error})
    assert isinstance(ev, UpstreamFailure)
    err = ev.error
    assert (err.status, err.type, err.code) == (status, type_, code)
    if _has_schema("openai.error"):  # written by another helper; validate once it exists
        assert_valid("openai.error", err.to_openai())
    assert code in err.message


def _has_schema(name):
    from schemas import SCHEMA_NAMES

    return (Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_NAMES[name]).exists()


def test_error_message_prefers_localized_then_message_then_code():
    def text(error):
        (ev,) = events_of({"error": error})
        return ev.error.message

    localized = {"debug": {"reason": "R", "localizedMessage": {"message": "本地化"}}}
    assert text({"code": "internal", "message": "m", "details": [localized]}) == (
        "Kimi: 本地化 (internal, R)"
    )
    assert text({"code": "internal", "message": "m"}) == "Kimi: m (internal)"
    assert text({"code": "internal"}) == "Kimi: internal (internal)"


@pytest.mark.parametrize(
    "reason",
    ["REASON_CONTENT_SENSITIVE", "reason_moderation", "REASON_CONTENT_FILTERED", "CENSORED"],
)
def test_moderation_reasons_become_content_filtered(reason):
    (ev,) = events_of(
        {"error": {"code": "permission_denied", "details": [{"debug": {"reason": reason}}]}}
    )
    assert ev == ContentFiltered(message="permission_denied")


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        b"\xff\xfe{}",
        '{"a": 1}'.encode("utf-16"),
        b"[" * 100_000,
        b'{"chat": []}',
        b'{"chat": {"id": 5}}',
        b'{"op": "set", "block": "x"}',
        b'{"op": "set", "mask": 5, "block": {}}',
        b'{"op": "set", "mask": "block.text", "block": {"text": "x"}}',
        b'{"op": "set", "mask": "block.text", "block": {"text": {"content": 1}}}',
        b'{"op": "set", "mask": "block.text", "block": {"id": 1, "text": {"content": "a"}}}',
        b'{"message": []}',
        b'{"message": {"refs": []}}',
        b'{"message": {"refs": {"searchChunks": {}}}}',
        b'{"message": {"refs": {"searchChunks": [1]}}}',
        b'{"message": {"refs": {"searchChunks": [{"searchResult": 1}]}}}',
        b'{"message": {"refs": {"searchChunks": [{"base": 1}]}}}',
        b'{"message": {"refs": {"searchChunks": [{"base": {"url": 1}}]}}}',
        b'{"message": {"role": 1}}',
        b'{"op": "set", "mask": "block.multiStage", "block": {"multiStage": 1}}',
        b'{"op": "set", "mask": "block.multiStage", "block": {"multiStage": {"stages": {}}}}',
        b'{"op": "set", "mask": "block.multiStage", "block": {"multiStage": {"stages": [1]}}}',
        b'{"op": "set", "block": {"multiStage": {"stages": [{"name": 1}]}}}',
        b'{"op": "set", "mask": "block.tool", "block": {"tool": 1}}',
        b'{"op": "set", "mask": "block.tool", "block": {"tool": {"contents": {}}}}',
        b'{"op": "set", "mask": "block.tool", "block": {"tool": {"contents": [1]}}}',
        b'{"op": "set", "block": {"tool": {"contents": [{"searchResult": 1}]}}}',
        b'{"op": "set", "mask": "block.text", "block": {"id": "1", "text": {"flags": 1}}}',
        b'{"error": "boom"}',
        b'{"error": {"code": 1}}',
        b'{"error": {"details": {}}}',
        b'{"error": {"details": [1]}}',
        b'{"error": {"details": [{"debug": 1}]}}',
        b'{"error": {"details": [{"debug": {"localizedMessage": 1}}]}}',
    ],
)
def test_malformed_messages_raise_and_stick(payload):
    decoder = ConnectDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(encode_envelope(payload))
    assert info.value.status == 502
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode_envelope({"done": {}}))
    with pytest.raises(RemoteProtocolError):
        decoder.close()


def test_data_after_end_of_stream_is_an_error():
    decoder = ConnectDecoder()
    assert decoder.feed(encode_envelope({}, end_stream=True)) == []
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode_envelope({"done": {}}))


def test_truncated_stream_raises_on_close():
    decoder = ConnectDecoder()
    assert decoder.feed(encode_envelope({"done": {}})[:-1]) == []
    with pytest.raises(RemoteProtocolError) as info:
        decoder.close()
    assert info.value.code == "truncated_frame"


def test_stream_that_just_stops_yields_nothing_on_close():
    decoder = ConnectDecoder()
    assert decoder.feed(encode_envelope({"op": "append", "block": {"text": {"content": "a"}}})) == [
        TextDelta(text="a")
    ]
    assert decoder.close() == []


def test_max_message_bytes_is_passed_to_framing():
    decoder = ConnectDecoder(max_message_bytes=8)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(encode_envelope({"done": {"x": 1}}))
    assert info.value.code == "frame_too_large"


# --- connect_error ----------------------------------------------------------------------------


def test_connect_error_reads_unary_json():
    err = connect_error(401, b'{"code": "unauthenticated", "message": "jwt expired"}')
    assert (err.status, err.type, err.code) == (401, "authentication_error", "unauthenticated")
    assert err.message == "HTTP 401: Kimi: jwt expired (unauthenticated)"
    err = connect_error(
        429,
        json.dumps(
            {
                "code": "resource_exhausted",
                "details": [
                    {"debug": {"paywall": {"x": 1}, "localizedMessage": {"message": "升级"}}}
                ],
            }
        ).encode(),
    )
    assert (err.status, err.type) == (402, "insufficient_quota")
    assert "升级" in err.message
    # a chat the request names that this account does not have: the client's 404
    err = connect_error(404, b'{"code": "not_found", "message": "chat not found"}')
    assert (err.status, err.type, err.code) == (404, "invalid_request_error", "not_found")
    assert_valid("openai.error", err.to_openai())


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "type_"),
    [
        (403, b"<html>Forbidden</html>", 401, "authentication_error"),
        (401, b"", 401, "authentication_error"),
        (402, b"pay", 402, "insufficient_quota"),
        (429, b"slow down", 429, "rate_limit_error"),
        (503, b"", 503, "server_error"),
        (504, b"[", 503, "server_error"),
        (500, b'{"code": 5}', 502, "upstream_error"),
        (404, b'"nope"', 502, "upstream_error"),
        (400, b'{"code": "invalid_argument", "details": "bad"}', 502, "upstream_error"),
        (418, b"[" * 100_000, 502, "upstream_error"),
    ],
)
def test_connect_error_falls_back_to_http_status(status, body, expected_status, type_):
    err = connect_error(status, body)
    assert isinstance(err, RemoteProtocolError)
    assert (err.status, err.type) == (expected_status, type_)
    assert err.code == f"http_{status}"
    assert err.message.startswith(f"Kimi answered HTTP {status}")
    assert len(err.message) < 1100


def test_connect_error_clips_long_bodies_and_keeps_text():
    err = connect_error(500, "错误".encode() * 2000)
    assert err.message.startswith("Kimi answered HTTP 500: 错误")
    assert err.message.endswith("…")


def test_events_before_a_fault_in_the_same_read_are_delivered_first():
    decoder = ConnectDecoder()
    good = encode_envelope({"op": "set", "mask": "block.text", "block": {"text": {"content": "a"}}})
    assert decoder.feed(good + encode_envelope(b"oops") + encode_envelope({"done": {}})) == [
        TextDelta(text="a")
    ]
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(b"")
    assert info.value.code == "bad_json"
    with pytest.raises(RemoteProtocolError):
        decoder.close()


# -- the fast path (plain deltas read straight from the read) ---------------------------------


def _delta(content, field="text", block="1", mask=None):
    return encode_envelope(
        {
            "op": "append",
            "mask": mask or f"block.{field}.content",
            "block": {"id": block, field: {"content": content}},
        }
    )


def test_plain_deltas_then_other_messages_in_one_read_keep_their_order():
    decoder = ConnectDecoder()
    body = (
        _delta("a")
        + _delta("b", field="think")
        + encode_envelope({"done": {}})
        + _delta("c", mask="block.text")
        + encode_envelope(b"{}", end_stream=True)
    )
    assert decoder.feed(body) == [
        TextDelta(text="a"),
        ReasoningDelta(text="b"),
        Finished(),
        TextDelta(text="c"),
    ]
    assert decoder.close() == []


def test_plain_delta_before_a_fault_in_the_same_read_is_delivered_first():
    for fault, code in (
        (encode_envelope(b"oops"), "bad_json"),
        (b"\x04\x00\x00\x00\x00", "bad_frame"),
        (encode_envelope({"block": []}), "bad_message"),
    ):
        decoder = ConnectDecoder()
        assert decoder.feed(_delta("a") + fault + _delta("b")) == [TextDelta(text="a")]
        for call in (lambda d=decoder: d.feed(_delta("c")), decoder.close):
            with pytest.raises(RemoteProtocolError) as info:
                call()
            assert info.value.code == code


def test_plain_delta_after_a_partial_envelope_waits_for_it():
    decoder = ConnectDecoder()
    first, second = _delta("a"), _delta("b")
    assert decoder.feed(first[:3]) == []
    assert decoder.feed(first[3:] + second) == [TextDelta(text="a"), TextDelta(text="b")]


def test_plain_deltas_after_the_end_of_stream_are_an_error():
    decoder = ConnectDecoder()
    assert decoder.feed(encode_envelope(b"{}", end_stream=True)) == []
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(_delta("a"))
    assert info.value.code == "bad_frame"


def test_a_long_run_of_appends_is_the_text_a_later_set_extends():
    decoder = ConnectDecoder()
    pieces = [f"{i}," for i in range(300)]
    out = [ev for piece in pieces for ev in decoder.feed(_delta(piece))]
    assert out == [TextDelta(text=p) for p in pieces]
    whole = "".join(pieces)

    def set_(content):
        return decoder.feed(
            encode_envelope(
                {
                    "op": "set",
                    "mask": "block.text",
                    "block": {"id": "1", "text": {"content": content}},
                }
            )
        )

    assert set_(whole) == []
    assert set_(whole + "end") == [TextDelta(text="end")]
    assert set_(whole) == [Noise(kind="rewrite")]  # shorter than what the client has
    assert set_("1" + whole[1:] + "end") == [Noise(kind="rewrite")]
    assert decoder.rewrites == 2
    assert decoder.feed(_delta("!")) == [TextDelta(text="!")]
    assert set_(whole + "end!?") == [TextDelta(text="?")]


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_other_bytes_like_reads_decode_the_same(kind):
    body = _delta("a") + _delta("é", field="think") + encode_envelope({"done": {}})
    decoder = ConnectDecoder()
    assert decoder.feed(kind(body[:3])) == []
    assert decoder.feed(kind(body[3:])) == [
        TextDelta(text="a"),
        ReasoningDelta(text="é"),
        Finished(),
    ]
    assert decoder.feed(kind(_delta("b"))) == [TextDelta(text="b")]


# --- thinking sent as text, search in tool blocks, errors after text ----------------------------


def _text(op, content, block="1", flags=None):
    holder = {"content": content} | ({} if flags is None else {"flags": flags})
    mask = "block.text" if op == "set" else "block.text.content"
    return {"op": op, "mask": mask, "block": {"id": block, "text": holder}}


def _stage(name, status):
    block = {"id": "0", "multiStage": {"stages": [{"name": name, "status": status}]}}
    return {"op": "set", "mask": "block.multiStage", "block": block}


def _kinds(messages):
    body = b"".join(encode_envelope(m) for m in messages)
    return [(type(e).__name__, getattr(e, "text", None)) for e in decode(body)]


def test_a_thinking_flag_sticks_to_its_block_until_it_is_flagged_answer():
    assert _kinds(
        [
            _text("set", "a", flags="thinking"),
            _text("append", "b"),
            _text("set", "ab", flags="answer"),  # same content: nothing new
            _text("append", "c"),
            _text("append", "d", block="2"),
        ]
    ) == [("ReasoningDelta", "a"), ("ReasoningDelta", "b"), ("TextDelta", "c"), ("TextDelta", "d")]


def test_an_open_thinking_stage_makes_unflagged_text_reasoning():
    assert _kinds(
        [
            _stage("STAGE_NAME_THINKING", "STAGE_STATUS_RUNNING"),
            _text("set", "a"),
            _text("append", "b", flags="answer"),  # the open stage wins over the flag
            _stage("STAGE_NAME_THINKING", "STAGE_STATUS_COMPLETED"),
            _text("append", "c"),
            _stage("STAGE_NAME_SEARCH", "in_progress"),  # only a first THINKING stage counts
            _text("append", "d"),
            {"op": "set", "block": {"id": "0", "multiStage": {"stages": []}}},
        ]
    ) == [
        ("Noise", None),
        ("ReasoningDelta", "a"),
        ("ReasoningDelta", "b"),
        ("Noise", None),
        ("TextDelta", "c"),
        ("Noise", None),
        ("TextDelta", "d"),
        ("Noise", None),
    ]


def test_the_fast_path_leaves_flagged_and_staged_text_to_the_exact_path():
    # appends that look like plain deltas, after a flag / inside a stage, are still reasoning
    body = b"".join(
        encode_envelope(m)
        for m in [
            _text("set", "", flags="thinking"),
            _text("append", "x"),
            _text("append", "y", flags="thinking"),
            _stage("STAGE_NAME_THINKING", "in_progress"),
            _text("append", "z", block="2"),
        ]
    )
    for cuts in ((), range(1, len(body))):
        events = decode(body, cuts)
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "xyz"
        assert not [e for e in events if isinstance(e, TextDelta)]


def test_search_cards_in_tool_blocks_are_results_and_the_rest_is_noise():
    base = {"title": "T", "url": "https://a.example/1", "siteName": "a", "snippet": "s"}
    events = decode(
        b"".join(
            encode_envelope(m)
            for m in [
                {"op": "set", "mask": "block.tool", "block": {"id": "1", "tool": {"name": "x"}}},
                {
                    "op": "set",
                    "block": {
                        "id": "1",
                        "tool": {
                            "name": "web_search",
                            "contents": [
                                {"text": "no card"},
                                {"searchResult": {"refIndex": 1, "base": base}},
                                {"searchResult": {"refIndex": 2, "base": {"title": "no url"}}},
                            ],
                        },
                    },
                },
            ]
        )
    )
    assert events == [
        Noise(kind="tool"),
        SearchResult(title="T", url="https://a.example/1", site_name="a", snippet="s"),
    ]


@pytest.mark.parametrize(
    ("code", "reason", "filtered"),
    [
        ("internal", "", True),
        ("unknown", "REASON_X", True),
        ("failed_precondition", "", True),
        ("unauthenticated", "", False),
        ("permission_denied", "", False),
        ("resource_exhausted", "", False),
        ("unavailable", "", False),
        ("deadline_exceeded", "", False),
        ("internal", "REASON_COMPLETION_OVERLOADED", False),
    ],
)
@pytest.mark.parametrize("end", [False, True])
def test_an_error_after_answer_text_is_a_stop_unless_auth_rate_or_overload(
    code, reason, filtered, end
):
    error = {"code": code, "details": [{"debug": {"reason": reason}}]}
    body = encode_envelope(_text("set", "partial")) + encode_envelope(
        {"error": error}, end_stream=end
    )
    events = decode(body)
    assert events[0] == TextDelta(text="partial")
    assert isinstance(events[1], ContentFiltered if filtered else UpstreamFailure)


@pytest.mark.parametrize(
    "before",
    [[], [{"op": "set", "mask": "block.think", "block": {"id": "0", "think": {"content": "r"}}}]],
)
def test_an_unknown_error_without_answer_text_stays_an_error(before):
    body = b"".join(encode_envelope(m) for m in before) + encode_envelope(
        {"error": {"code": "internal"}}, end_stream=True
    )
    assert isinstance(decode(body)[-1], UpstreamFailure)


@pytest.mark.parametrize(
    "chat_id", ["1a0a4ba7-0db2-835e-8000-09e4fa50aa86", "cnndivilnl96vah411dg"]
)
def test_uuid_and_legacy_chat_ids_are_valid(chat_id):
    from translator import check_conversation_id, validate_chat_id

    assert validate_chat_id(chat_id) == chat_id
    assert check_conversation_id(chat_id, "conversation_id") == chat_id
