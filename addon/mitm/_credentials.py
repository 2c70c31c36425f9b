"""Client credentials kept out of mitmproxy's flows.

mitmproxy shows every flow in its web UI and writes it to `-w` captures, headers and bodies
included. The relay needs the client's `Authorization` / `x-api-key` (a Kimi token or a gateway
key) and the token in a `/token/check` body; the flow does not. So the addon moves them out of
the flow as soon as it sees them (the headers in `requestheaders`, before mitmweb's view adds the
flow) into this vault, and puts an opaque single-use handle in their place; the relay, in the
same process, takes them back by that handle. A handle is worthless outside this process and
after its request.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

__all__ = [
    "CREDENTIAL_HANDLE_HEADER",
    "CREDENTIAL_HEADERS",
    "HELD_BODY",
    "CredentialVault",
    "Held",
    "HeldBody",
]

CREDENTIAL_HANDLE_HEADER = "x-kimi-free-api-credential"
#: the request headers that carry a client's credential (OpenAI's and Anthropic's), lower case
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


@dataclass(frozen=True, slots=True)
class HeldBody:
    """A request body taken out of the flow, as it came (still content-encoded)."""

    raw: bytes
    content_encoding: str


@dataclass(frozen=True, slots=True)
class Held:
    headers: tuple[tuple[str, str], ...]
    body: HeldBody | None = None


#: the relay puts a held body here; serve/_body.py reads it instead of the (placeholder) payload
HELD_BODY = web.RequestKey("kimi_free_api_held_body", HeldBody)


class CredentialVault:
    def __init__(self) -> None:
        self._held: dict[str, Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def put(self, headers: Iterable[tuple[str, str]]) -> str:
        """Keep credential headers (name, value); return the handle for them."""
        handle = secrets.token_urlsafe(24)
        self._held[handle] = Held(headers=tuple(headers))
        return handle

    def hold_body(self, handle: str, body: HeldBody) -> None:
        """Keep the request body under an existing handle too."""
        held = self._held.get(handle)
        if held is not None:
            self._held[handle] = Held(headers=held.headers, body=body)

    def take(self, handle: str) -> Held | None:
        """What is kept under `handle`, once: the handle is spent."""
        return self._held.pop(handle, None)

    def discard(self, handle: str) -> None:
        self._held.pop(handle, None)
