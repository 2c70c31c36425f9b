"""Small helpers that keep secrets secret: fingerprints, key hashes, constant-time compares and
redaction of log lines and headers.

Nothing here stores a secret; callers keep tokens in the account store and only ever log what
`redact` / `redact_headers` return.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "REDACTED",
    "constant_time_equal",
    "fingerprint",
    "hash_key",
    "new_salt",
    "redact",
    "redact_headers",
]

REDACTED = "***"


def new_salt() -> bytes:
    """A fresh random secret for keyed fingerprints (one per store)."""
    return secrets.token_bytes(32)


def fingerprint(token: str, salt: bytes) -> str:
    """A keyed HMAC-SHA256 of `token`, hex.

    Keyed with the store's secret salt so that the fingerprint table alone (e.g. a leaked backup
    without the `meta` row) cannot confirm a guessed token.
    """
    return hmac.new(salt, token.encode("utf-8"), hashlib.sha256).hexdigest()


def hash_key(key: str) -> str:
    """SHA-256 of a gateway or admin key, hex, with a domain prefix.

    Gateway keys are meant to be long random strings (the config enforces a minimum length), so an
    unsalted hash is enough; the prefix keeps these hashes apart from any other SHA-256 use.
    """
    return hashlib.sha256(b"kimi-free-api/gateway-key\x00" + key.encode("utf-8")).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    """Compare two strings without leaking where they first differ."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


# key = value / "key": "value" pairs whose name says they hold a secret (JSON, query strings,
# cookies). The value may be short, so it is not left to the generic rules below.
_SECRET_FIELD = re.compile(
    r"(?i)(\"?\b(?:access_token|refresh_token|id_token|token|api_key|apikey|admin_key|"
    r"password|secret|kimi-auth|authorization)\"?\s*[:=]\s*\"?)([^\s\"',;&]+)"
)
# ...except in prose: "the refresh token: log in again" names a token and goes on with words.
# A value is prose when a plain-word name, a colon and a space are followed by a short plain word
# and then more words; real tokens have digits, symbols or length.
_PROSE_NAME = re.compile(r"[A-Za-z]+:\s+")  # a plain word: not `refresh_token:`, not quoted
_PROSE_VALUE = re.compile(r"[A-Za-z]{1,15}")
_MORE_WORDS = re.compile(r"\s+[A-Za-z]")


def _redact_field(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    prose = (
        _PROSE_NAME.fullmatch(name) is not None
        and _PROSE_VALUE.fullmatch(value) is not None
        and _MORE_WORDS.match(match.string, match.end()) is not None
    )
    return match.group(0) if prose else name + REDACTED


# Order matters: the most specific patterns run first, so e.g. "Bearer eyJ..." keeps its scheme.
_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # Authorization schemes: keep the scheme word, drop everything up to the next quote/space.
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"), r"\1 " + REDACTED),
    (_SECRET_FIELD, _redact_field),
    # JWTs: three base64url segments, the first one a JSON object ("eyJ" = '{"').
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # OpenAI-style keys (our gateway and admin keys).
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), REDACTED),
    # Anything else that looks like a long opaque token: 32+ characters of the base64/hex
    # alphabet with at least one digit. Long enough to spare words and Kimi's 20-character chat
    # ids; "/" and "." are not in the class, so URL paths and file names survive.
    (
        re.compile(r"(?<![A-Za-z0-9_\-+=])(?=[A-Za-z0-9_\-+=]*\d)[A-Za-z0-9_\-+=]{32,}"),
        REDACTED,
    ),
)


def redact(text: str) -> str:
    """Replace bearer values, JWTs, secret-named fields and long token-like strings with `***`."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# Header values that are secret or identify the user/device as a whole (X-Msh-* carry device and
# session ids and the risk-control blob; X-Traffic-Id is the Kimi user id).
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-traffic-id"}
)


def redact_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> list[tuple[str, str]]:
    """The headers as (name, value) pairs fit for a log line.

    Authorization-like values keep their scheme word (`Bearer ***`) so a log still tells which
    kind of credential arrived; other listed headers become `***`; every other value goes through
    `redact` in case a token hides in it.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, str]] = []
    for name, value in items:
        lower = name.lower()
        if lower in ("authorization", "proxy-authorization"):
            scheme, _, rest = value.strip().partition(" ")
            out.append((name, f"{scheme} {REDACTED}" if rest else REDACTED))
        elif lower in _SECRET_HEADERS or lower.startswith("x-msh-"):
            out.append((name, REDACTED))
        else:
            out.append((name, redact(value)))
    return out
