from __future__ import annotations

import json
import struct

import pytest

from translator import LocalProtocolError, RemoteProtocolError
from translator.connect import _frames as _connect_frames
from translator.connect._frames import (
    FLAG_END_STREAM,
    Envelope,
    EnvelopeDecoder,
    encode_envelope,
)


def test_encode_mapping_is_compact_utf8_json():
    frame = encode_envelope({"a": "你好", "b": [1, 2]})
    body = '{"a":"你好","b":[1,2]}'.encode()
    assert frame == b"\x00" + struct.pack(">I", len(body)) + body


def test_encode_bytes_unchanged_and_end_stream_flag():
    assert encode_envelope(b"{}", end_stream=True) == b"\x02\x00\x00\x00\x02{}"
    assert encode_envelope(b"") == b"\x00\x00\x00\x00\x00"


def test_encode_refuses_payload_over_the_wire_limit(monkeypatch):
    monkeypatch.setattr(_connect_frames, "_MAX_WIRE_LENGTH", 3)
    with pytest.raises(LocalProtocolError) as info:
        encode_envelope(b"abcd")
    assert info.value.status == 400


def test_envelope_end_stream_property():
    assert Envelope(flags=FLAG_END_STREAM, payload=b"").end_stream
    assert not Envelope(flags=0, payload=b"").end_stream


def test_decode_several_envelopes_in_one_read():
    data = (
        encode_envelope({"x": 1}) + encode_envelope(b"") + encode_envelope(b"{}", end_stream=True)
    )
    decoder = EnvelopeDecoder()
    assert decoder.feed(data) == [
        Envelope(flags=0, payload=b'{"x":1}'),
        Envelope(flags=0, payload=b""),
        Envelope(flags=2, payload=b"{}"),
    ]
    decoder.close()


def test_decode_byte_at_a_time():
    data = encode_envelope({"k": "🌏"}) * 2
    decoder = EnvelopeDecoder()
    out = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    decoder.close()
    assert [e.payload for e in out] == [b'{"k":"\xf0\x9f\x8c\x8f"}'] * 2


def test_close_with_partial_header_or_payload_raises():
    for cut in (1, 4, 5, 7):
        decoder = EnvelopeDecoder()
        assert decoder.feed(encode_envelope({"abc": 1})[:cut]) == []
        with pytest.raises(RemoteProtocolError) as info:
            decoder.close()
        assert info.value.code == "truncated_frame"


def test_declared_length_over_cap_raises_on_the_header_alone():
    decoder = EnvelopeDecoder(max_message_bytes=10)
    assert decoder.feed(encode_envelope(b"x" * 10)) == [Envelope(flags=0, payload=b"x" * 10)]
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(b"\x00" + struct.pack(">I", 11))
    assert info.value.code == "frame_too_large"
    # the error is sticky
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")
    with pytest.raises(RemoteProtocolError):
        decoder.close()


def test_default_cap_is_16_mib():
    decoder = EnvelopeDecoder()
    assert decoder.max_message_bytes == 16 * 1024 * 1024
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\x00" + struct.pack(">I", 16 * 1024 * 1024 + 1))


@pytest.mark.parametrize("flags", [0x01, 0x03, 0x04, 0x80])
def test_compressed_and_reserved_flags_are_refused(flags):
    decoder = EnvelopeDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(bytes([flags]) + b"\x00\x00\x00\x02{}")
    assert info.value.code == "bad_frame"


def test_encoded_payload_is_valid_json_roundtrip():
    payload = {"message": {"blocks": [{"text": {"content": "a\u2028b\x00"}}]}}
    (env,) = EnvelopeDecoder().feed(encode_envelope(payload))
    assert json.loads(env.payload) == payload


def test_envelopes_before_a_bad_header_are_delivered_then_the_error():
    decoder = EnvelopeDecoder(max_message_bytes=10)
    data = encode_envelope(b"{}") + b"\x00" + struct.pack(">I", 11)
    assert decoder.feed(data) == [Envelope(flags=0, payload=b"{}")]
    with pytest.raises(RemoteProtocolError) as info:
        decoder.close()
    assert info.value.code == "frame_too_large"


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_whole_envelopes_are_read_in_place_and_only_the_tail_is_kept(kind):
    one, two = encode_envelope({"a": 1}), encode_envelope({"b": 2})
    decoder = EnvelopeDecoder()
    assert decoder.buffered == 0
    out = decoder.feed(kind(one + two[:7]))
    assert out == [Envelope(flags=0, payload=b'{"a":1}')]
    assert all(type(e.payload) is bytes for e in out)
    assert decoder.buffered == 7
    assert decoder.feed(kind(two[7:] + one[:2])) == [Envelope(flags=0, payload=b'{"b":2}')]
    assert decoder.buffered == 2
    assert decoder.feed(kind(one[2:])) == [Envelope(flags=0, payload=b'{"a":1}')]
    assert decoder.buffered == 0
    decoder.close()
