"""Our errors in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.

The translator's errors carry an HTTP status and an OpenAI type; a Messages client expects
Anthropic's error types, which its SDK maps to exception classes by status. The status decides:

    400 → 400 invalid_request_error      404 → 404 not_found_error
    401 → 401 authentication_error       413 → 413 invalid_request_error
    402 → 402 billing_error              429 → 429 rate_limit_error (with retry-after)
    403 → 403 permission_error           503 → 529 overloaded_error (Kimi or every account busy)
    504 → 504 timeout_error              another 4xx → its status, invalid_request_error
                                         anything else → its status, api_error

The message is ours; OpenAI's `param` and `code` have no place in Anthropic's shape, and the
message already names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from translator._errors import TranslatorError

__all__ = ["ANTHROPIC_ERROR_TYPES", "OVERLOADED_STATUS", "anthropic_error"]

#: Anthropic's status for "overloaded" (not an IANA status; its SDKs retry it)
OVERLOADED_STATUS: Final = 529

#: our HTTP status → (Anthropic's status, Anthropic's error type)
ANTHROPIC_ERROR_TYPES: Final[Mapping[int, tuple[int, str]]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    402: (402, "billing_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    413: (413, "invalid_request_error"),
    429: (429, "rate_limit_error"),
    503: (OVERLOADED_STATUS, "overloaded_error"),
    504: (504, "timeout_error"),
}


def anthropic_error(err: TranslatorError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the Anthropic error body (also the stream's `error` event) for
    `err`."""
    # A client error Anthropic has no type for (an unsupported Content-Encoding, a URL or
    # header too long) is still the client's: api_error would mean "Anthropic failed".
    other = "invalid_request_error" if 400 <= err.status < 500 else "api_error"
    status, kind = ANTHROPIC_ERROR_TYPES.get(err.status, (err.status, other))
    return status, {"type": "error", "error": {"type": kind, "message": err.message}}
