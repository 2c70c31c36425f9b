"""The translator's errors: whose fault it was, and what OpenAI error a client should see.

    TranslatorError                 an OpenAI-shaped error: message, type, param, code, status
    ├── LocalProtocolError          the client sent something we cannot translate (HTTP 400 unless
    │                               said otherwise); raised by the request side
    └── RemoteProtocolError         Kimi refused, failed, or sent something we cannot read
                                    (401 / 402 / 429 / 502 / 503 ...); raised or reported by the
                                    response side and by the error mapping

Only the addon turns these into bytes (`to_openai()` gives the JSON body of the error); the
translator never formats an error response itself.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalProtocolError", "RemoteProtocolError", "TranslatorError"]


class TranslatorError(Exception):
    """An error that maps to one OpenAI error object.

    Attributes mirror OpenAI's `{"error": {"message", "type", "param", "code"}}` plus the HTTP
    `status` the addon should answer with when no byte of the reply has been sent yet.
    """

    default_status = 500
    default_type = "server_error"
    #: seconds the client should wait before retrying (Kimi's Retry-After, or our cooldown);
    #: the addon sends it as a Retry-After header
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,  # shadows the builtin on purpose: the OpenAI field is "type"
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = self.default_status if status is None else status
        self.type = self.default_type if type is None else type
        self.param = param
        self.code = code

    def to_openai(self) -> dict[str, Any]:
        """The error as OpenAI's JSON error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, "
            f"type={self.type!r}, param={self.param!r}, code={self.code!r})"
        )


class LocalProtocolError(TranslatorError):
    """The OpenAI request cannot be translated; `param` names the offending field."""

    default_status = 400
    default_type = "invalid_request_error"


class RemoteProtocolError(TranslatorError):
    """Kimi answered with an error, or with data that breaks its protocol."""

    default_status = 502
    default_type = "upstream_error"
