from __future__ import annotations

import base64
import json

import pytest

from translator import RemoteProtocolError
from translator.connect._jwt import JwtClaims, decode_jwt_claims


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_token(claims, *, header=None) -> str:
    head = b64(json.dumps(header or {"alg": "HS512", "typ": "JWT"}).encode())
    body = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    return f"{head}.{b64(body)}.c2lnbmF0dXJl"


def test_reads_the_claims_we_use():
    token = make_token(
        {
            "sub": "csdjofkrmee9ci7fo20g",
            "ssid": "1731086499958639802",
            "device_id": "7651804114103329291",
            "exp": 1784166680,
            "iat": 1781574680,
            "membership": {"level": 10},
        }
    )
    assert decode_jwt_claims(token) == JwtClaims(
        sub="csdjofkrmee9ci7fo20g",
        ssid="1731086499958639802",
        device_id="7651804114103329291",
        exp=1784166680,
    )


def test_bearer_prefix_numeric_ids_and_float_exp():
    token = make_token({"sub": "u", "ssid": 17310864999586398, "device_id": 7, "exp": 17.9})
    claims = decode_jwt_claims("Bearer " + token)
    assert claims == JwtClaims(sub="u", ssid="17310864999586398", device_id="7", exp=17)


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"sub": "", "ssid": None, "device_id": True, "exp": True},
        {"sub": ["x"], "ssid": {"a": 1}, "device_id": 1.5, "exp": "soon"},
        {"exp": 1e300},
    ],
)
def test_missing_or_unusable_claims_are_none(claims):
    assert decode_jwt_claims(make_token(claims)) == JwtClaims()


def test_nan_exp_is_none():
    assert decode_jwt_claims(make_token(b'{"exp": NaN}')).exp is None


def test_unpadded_payload_lengths_all_decode():
    for n in range(4):
        claims = {"sub": "x" * n}
        assert decode_jwt_claims(make_token(claims)).sub == ("x" * n or None)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a..c",
        "a.b+c.d",
        "a.b=.c",
        "a.b c.d",
        "eyJhbGciOiJIUzUxMiJ9.e.sig",  # one base64 character: not a whole byte
        make_token(b"not json"),
        make_token(b"[1, 2]"),
        make_token(b"\xff\xfe"),
        make_token(b"[" * 5000),
        "a." + "A" * 20_000 + ".c",
    ],
)
def test_not_a_jwt_raises_without_echoing_the_token(token):
    with pytest.raises(RemoteProtocolError) as info:
        decode_jwt_claims(token)
    err = info.value
    assert (err.status, err.type, err.code) == (401, "authentication_error", "invalid_jwt")
    if len(token) > 3:
        assert token not in err.message
