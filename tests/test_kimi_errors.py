"""Kimi error bodies, types and statuses → OpenAI errors; Retry-After parsing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.schema_check import assert_valid
from translator._errors import RemoteProtocolError
from translator.legacy._errors import error_for_type, is_moderation, kimi_error, retry_after_seconds


@pytest.mark.parametrize(
    ("error_type", "status", "expected"),
    [
        ("auth.token.invalid", None, (401, "authentication_error", "invalid_api_key")),
        (None, 401, (401, "authentication_error", "invalid_api_key")),
        ("chat.user_stream_pushing", None, (429, "rate_limit_error", "stream_pushing")),
        ("chat.user_stream_pushing", 200, (429, "rate_limit_error", "stream_pushing")),
        ("chat.rate_limit", None, (429, "rate_limit_error", "rate_limit_exceeded")),
        (None, 429, (429, "rate_limit_error", "rate_limit_exceeded")),
        (
            "openai.completion.token_length_too_long",
            200,
            (400, "invalid_request_error", "context_length_exceeded"),
        ),
        ("openai.completion.stream", None, (503, "upstream_error", "upstream_overloaded")),
        ("chat.paywall", None, (402, "insufficient_quota", "insufficient_quota")),
        (None, 402, (402, "insufficient_quota", "insufficient_quota")),
        (None, 403, (403, "permission_error", "upstream_forbidden")),
        ("chat.forbidden", 200, (400, "invalid_request_error", "content_filter")),
        ("chat.not_found", 404, (404, "invalid_request_error", "conversation_not_found")),
        (None, 404, (502, "upstream_error", "upstream_error")),  # a route Kimi no longer has
        ("something.new", 200, (502, "upstream_error", "upstream_error")),
        (None, 500, (502, "upstream_error", "upstream_error")),
        (None, 503, (502, "upstream_error", "upstream_error")),
        (None, None, (502, "upstream_error", "upstream_error")),
    ],
)
def test_error_for_type(error_type, status, expected):
    err = error_for_type(error_type, "msg", status)
    assert isinstance(err, RemoteProtocolError)
    assert (err.status, err.type, err.code) == expected
    assert "msg" in err.message
    assert_valid("openai.error", err.to_openai())


def test_message_keeps_kimi_words_and_type():
    assert error_for_type("x.y", "  服务  繁忙 ").message == "Kimi: 服务 繁忙 (x.y)"
    assert error_for_type(None, "", 500).message == "Kimi: request failed (HTTP 500)"
    assert error_for_type(None, "m").message == "Kimi: m (no error type)"


def test_long_messages_are_shortened():
    err = error_for_type("t", "x" * 2000)
    assert len(err.message) < 600
    assert err.message.endswith("… (t)")


@pytest.mark.parametrize(
    ("error_type", "moderation"),
    [
        (None, True),
        ("", True),
        ("chat.forbidden", True),
        ("chat.content_security", True),
        ("CHAT.SENSITIVE", True),
        ("auth.token.invalid", False),
        ("openai.completion.stream", False),
    ],
)
def test_is_moderation(error_type, moderation):
    assert is_moderation(error_type) is moderation


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            b'{"error_type": "auth.token.invalid", "message": "token expired"}',
            (401, "Kimi: token expired (auth.token.invalid)"),
        ),
        (
            200,
            {"error_type": "chat.user_stream_pushing", "message": "busy", "detail": []},
            (429, "Kimi: busy (chat.user_stream_pushing)"),
        ),
        (
            400,
            {"error": {"error_type": "openai.completion.token_length_too_long", "message": "big"}},
            (400, "Kimi: big (openai.completion.token_length_too_long)"),
        ),
        (
            500,
            {"error": {"message": "inner"}, "error_type": "outer.type"},
            (502, "Kimi: inner (outer.type)"),
        ),
        (502, b"<html>Bad   Gateway</html>", (502, "Kimi: <html>Bad Gateway</html> (HTTP 502)")),
        (503, None, (502, "Kimi: request failed (HTTP 503)")),
        (500, b"\xff\xfe not utf-8", (502, "Kimi: \ufffd\ufffd not utf-8 (HTTP 500)")),
        (500, b"[1, 2]", (502, "Kimi: request failed (HTTP 500)")),
        (429, bytearray(b'{"message": 5}'), (429, "Kimi: request failed (HTTP 429)")),
    ],
)
def test_kimi_error(status, body, expected):
    err = kimi_error(status, body)
    assert (err.status, err.message) == expected
    assert_valid("openai.error", err.to_openai())


@given(st.integers(100, 599), st.binary(max_size=200))
def test_kimi_error_is_total(status, body):
    err = kimi_error(status, body)
    assert err.status in {400, 401, 402, 403, 429, 502, 503}
    assert_valid("openai.error", err.to_openai())


@given(
    st.integers(100, 599),
    st.dictionaries(
        st.sampled_from(["error_type", "message", "error", "detail"]),
        st.none()
        | st.text(max_size=20)
        | st.integers()
        | st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
    ),
)
def test_kimi_error_on_any_json_body(status, body):
    err = kimi_error(status, json.dumps(body).encode())
    assert err.message.startswith("Kimi: ")


# -- Retry-After ------------------------------------------------------------------------------

NOW = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


@pytest.mark.parametrize(
    ("headers", "now", "expected"),
    [
        ({}, None, None),
        ({"Retry-After": "120"}, None, 120.0),
        ({"retry-after": " 7 "}, None, 7.0),
        ({"RETRY-AFTER": "Sun, 06 Nov 1994 08:50:37 GMT"}, NOW, 60.0),
        ({"Retry-After": "Sunday, 06-Nov-94 08:49:47 GMT"}, NOW, 10.0),
        ({"Retry-After": "Sun Nov  6 08:49:40 1994"}, NOW, 3.0),
        ({"Retry-After": "Sun, 06 Nov 1994 08:49:00 GMT"}, NOW, 0.0),  # in the past
        ({"Retry-After": "Sun, 06 Nov 1994 08:50:37 GMT"}, None, None),  # no clock
        ({"Retry-After": "Thu, 01 Jan 1970 00:00:10 GMT"}, 0.0, 10.0),
        ({"Retry-After": "Tue, 29 Feb 2000 00:00:00 GMT"}, 951782400.0 - 5, 5.0),
        ({"Retry-After": "Mon, 01-Jan-01 00:00:00 GMT"}, 978307200.0, 0.0),  # 2001
        ({"Retry-After": "soon"}, NOW, None),
        ({"Retry-After": "-5"}, NOW, None),
        ({"Retry-After": "Sun, 06 Foo 1994 08:49:37 GMT"}, NOW, None),
        ({"Retry-After": "Sun, 32 Nov 1994 08:49:37 GMT"}, NOW, None),
        ({"Retry-After": "Sun, 06 Nov 1994 24:00:00 GMT"}, NOW, None),
    ],
)
def test_retry_after_seconds(headers, now, expected):
    assert retry_after_seconds(headers, now=now) == expected


@given(st.text(max_size=40), st.floats(0, 4e9))
def test_retry_after_is_total_and_never_negative(value, now):
    result = retry_after_seconds({"Retry-After": value}, now=now)
    assert result is None or result >= 0
