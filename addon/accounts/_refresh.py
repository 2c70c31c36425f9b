"""Turning a refresh token into an access token (the call the account pool makes)."""

from __future__ import annotations

import json

from addon.upstream._kimi import KimiClient
from translator import RemoteProtocolError
from translator.connect._jwt import decode_jwt_claims
from translator.legacy._calls import refresh_token_call

from ._pool import AuthFailed, TokenGrant, TransientFailure

__all__ = ["refresh_grant"]


async def refresh_grant(kimi: KimiClient, refresh_token: str, *, path: str) -> TokenGrant:
    """`GET <refresh path>` with the refresh token as bearer. A 401 or `auth.token.invalid`
    means the token is dead (AuthFailed); anything else unexpected is transient."""
    call = refresh_token_call(path)
    try:
        response = await kimi.send(call, token=refresh_token)
    except RemoteProtocolError as exc:
        raise TransientFailure(exc.message) from exc
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    error_type = body.get("error_type") if isinstance(body, dict) else None
    if response.status_code in (401, 403) or error_type == "auth.token.invalid":
        raise AuthFailed(f"Kimi refused the refresh token (HTTP {response.status_code})")
    if response.status_code >= 400 or not isinstance(body, dict):
        raise TransientFailure(f"token refresh answered HTTP {response.status_code}")
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise TransientFailure("token refresh answer has no access_token")
    new_refresh = body.get("refresh_token")
    try:
        exp = decode_jwt_claims(access).exp
    except RemoteProtocolError:
        exp = None  # legacy tokens need not be JWTs; the pool then uses its default lifetime
    expires_at = None if exp is None else float(exp)
    return TokenGrant(
        access_token=access,
        refresh_token=new_refresh if isinstance(new_refresh, str) and new_refresh else None,
        expires_at=expires_at,
    )
