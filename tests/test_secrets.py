from __future__ import annotations

import pytest

from addon.accounts._secrets import (
    REDACTED,
    constant_time_equal,
    fingerprint,
    hash_key,
    new_salt,
    redact,
    redact_headers,
)

JWT = (
    "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9."
    "eyJ1c2VyX2lkIjoiY3A1aDAwMDAiLCJleHAiOjE3MDAwMDAwMDB9."
    "kV3b4pX0bq9rXo5Rk8p0JmHqFh0u2T0y1bY7e2zq0d8"
)
OPAQUE = "d41f7a8c9e0b1a2f3c4d5e6f7a8b9c0d1e2f3a4b"


def test_fingerprint_is_keyed_and_stable():
    salt = new_salt()
    assert len(salt) == 32
    assert fingerprint("tok", salt) == fingerprint("tok", salt)
    assert fingerprint("tok", salt) != fingerprint("tok", new_salt())
    assert fingerprint("tok", salt) != fingerprint("tok2", salt)
    assert "tok" not in fingerprint("tok", salt)
    assert len(fingerprint("tok", salt)) == 64


def test_hash_key_and_constant_time_equal():
    assert hash_key("sk-abc") == hash_key("sk-abc")
    assert hash_key("sk-abc") != hash_key("sk-abd")
    assert constant_time_equal(hash_key("sk-abc"), hash_key("sk-abc"))
    assert not constant_time_equal(hash_key("sk-abc"), hash_key("sk-abd"))
    assert not constant_time_equal("a", "ab")


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (f"GET /api/user Authorization: Bearer {JWT}", JWT),
        (f"refresh failed for bearer {OPAQUE} (401)", OPAQUE),
        (f'{{"access_token": "{JWT}", "refresh_token": "short1"}}', "short1"),
        (f'{{"access_token": "{JWT}", "refresh_token": "short1"}}', JWT),
        (f"token={OPAQUE}&x=1", OPAQUE),
        (f"cookie kimi-auth={JWT}; other=1", JWT),
        ("client key sk-team-0123456789abcdef refused", "sk-team-0123456789abcdef"),
        (f"upstream said {OPAQUE} was bad", OPAQUE),
        (f"jwt {JWT} in the middle", JWT),
    ],
)
def test_redact_removes_tokens(line, secret):
    out = redact(line)
    assert secret not in out
    assert REDACTED in out


def test_redact_keeps_ordinary_text():
    line = "POST /api/chat/cr0abcdefghijklmnopq/completion/stream 200 in 1.25 s (model kimi-search)"
    assert redact(line) == line
    assert redact("Bearer abc") == "Bearer ***"


def test_redact_headers():
    headers = {
        "Authorization": f"Bearer {JWT}",
        "Cookie": f"kimi-auth={JWT}",
        "X-Msh-Device-Id": "7312345678901234567",
        "X-Traffic-Id": "cp5h0000",
        "Content-Type": "application/json",
        "Referer": f"https://www.kimi.com/?t={OPAQUE}",
    }
    out = dict(redact_headers(headers))
    assert out["Authorization"] == "Bearer ***"
    assert out["Cookie"] == REDACTED
    assert out["X-Msh-Device-Id"] == REDACTED
    assert out["X-Traffic-Id"] == REDACTED
    assert out["Content-Type"] == "application/json"
    assert OPAQUE not in out["Referer"]
    # pairs work too and keep order and duplicates
    pairs = redact_headers([("authorization", "raw-token-without-scheme"), ("A", "b")])
    assert pairs == [("authorization", REDACTED), ("A", "b")]


@pytest.mark.parametrize(
    "line",
    [
        "Kimi rejected the refresh token: log in again and send the new token",
        "the access token: expired before use",
        "Kimi refused the refresh token (HTTP 401)",
    ],
)
def test_redact_keeps_prose_about_tokens(line):
    assert redact(line) == line


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("token: abc123 more words", "abc123"),
        ("password: hunter", "hunter"),
        ("refresh_token: plainword next", "plainword"),
        ('{"token": "abc"} then text', "abc"),
        ("token=abc def", "abc"),
    ],
)
def test_redact_still_removes_short_secret_values(line, secret):
    assert secret not in redact(line).replace("words", "").replace("text", "")
    assert REDACTED in redact(line)
