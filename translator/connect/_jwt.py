"""Reading the claims of Kimi's access token (a JWT), without checking its signature.

www.kimi.com wants some of the token's claims echoed as headers (`sub` → `x-traffic-id`, `ssid` →
`x-msh-session-id`, `device_id` → `x-msh-device-id`), and the token's lifetime is only knowable
from its `exp` claim (public clients report both 15 minutes and 30 days). Verifying the signature
needs Kimi's key and is Kimi's job; we only read what the token says about itself.

A token that is not a readable JWT raises `RemoteProtocolError` (status 401,
`authentication_error`, code `invalid_jwt`): the token came from Kimi's refresh call or from the
account store, not from the OpenAI client, and no call can succeed with it. The error message
never contains the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from translator._errors import RemoteProtocolError

__all__ = ["JwtClaims", "decode_jwt_claims"]

#: a JWT is three base64url segments; real Kimi tokens are well under 2 KiB
_MAX_TOKEN_CHARS: Final = 16 * 1024
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtClaims:
    """The claims we use; each is None when the token does not carry it (or carries it with a
    type we cannot use)."""

    #: the user id, sent as `x-traffic-id`
    sub: str | None = None
    #: the login session id, sent as `x-msh-session-id`
    ssid: str | None = None
    #: the device id, sent as `x-msh-device-id`
    device_id: str | None = None
    #: expiry, seconds since the Unix epoch (RFC 7519 §4.1.4 "NumericDate")
    exp: int | None = None


def decode_jwt_claims(token: str) -> JwtClaims:
    """The claims in the payload of the JWT `token` (signature not checked).

    A leading `Bearer ` is tolerated. String-valued ids may also arrive as JSON numbers (some
    issuers encode snowflake ids that way); they are turned into their decimal text.

    Raises:
        RemoteProtocolError: `token` is not three base64url segments whose middle one is a JSON
            object.
    """
    if token[:7].lower() == "bearer ":
        token = token[7:]
    if len(token) > _MAX_TOKEN_CHARS:
        raise _invalid("the access token is too long to be a JWT")
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) for p in parts[:2]):
        raise _invalid("the access token is not a JWT (header.payload.signature)")
    segment = parts[1]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise _invalid("the access token's payload is not base64url JSON") from None
    if not isinstance(claims, dict):
        raise _invalid("the access token's payload is not a JSON object")
    return JwtClaims(
        sub=_text(claims.get("sub")),
        ssid=_text(claims.get("ssid")),
        device_id=_text(claims.get("device_id")),
        exp=_seconds(claims.get("exp")),
    )


def _text(value: Any) -> str | None:
    # bool is an int subclass; `true` is no id
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def _seconds(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) < 1e15:  # not NaN/inf
        return int(value)
    return None


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, status=401, type="authentication_error", code="invalid_jwt")
