"""Deleting one Kimi conversation, in either dialect.

Legacy: `DELETE /api/chat/{id}`; a 404 means it is already gone.

Connect: `DeleteChat` is reported under two services (`kimi.gateway.chat.v1.ChatService`, which
the most complete live-verified client uses, and `kimi.chat.v1.ChatService`). We try them in
that order, move on to the other one when a route does not exist (HTTP 404 without a Connect
`not_found`, or `unimplemented`: see `translator.delete_outcome`), and remember per base URL
which one worked, for the rest of the process. A conversation is only counted as deleted when a
service deleted it or a service that knows chats said it is not there; when neither route
exists the deletion fails and is retried later, so a guess never leaves a conversation behind.
The route that worked is also noted in the store (`meta` table, key
`delete_chat_service:<base URL>`), so a restart starts with it.
"""

from __future__ import annotations

from typing import Final, Protocol

from translator import RemoteProtocolError
from translator.connect._calls import DELETE_CHAT_SERVICES, delete_chat_call, delete_outcome

from ._dialects import Dialect
from ._kimi import KimiClient

__all__ = ["delete_conversation", "delete_service_for"]

#: base URL → the DeleteChat service that last worked there (process-wide: keepers come and
#: go with reloads, the upstream does not change)
_WORKING: Final[dict[str, str]] = {}


class Notes(Protocol):
    """Where the route is persisted (the store)."""

    async def note(self, key: str) -> str | None: ...

    async def set_note(self, key: str, value: str) -> None: ...


def _key(base_url: str) -> str:
    return f"delete_chat_service:{base_url}"


def delete_service_for(base_url: str) -> str | None:
    """The DeleteChat service known to work at `base_url`, if one has worked yet."""
    return _WORKING.get(base_url)


async def delete_conversation(
    kimi: KimiClient,
    dialect: Dialect,
    conversation_id: str,
    token: str,
    *,
    notes: Notes | None = None,
) -> None:
    """Delete `conversation_id`; return when it is deleted or known to be gone.

    Raises:
        RemoteProtocolError: Kimi refused, or (Connect) no DeleteChat route exists; the caller
            keeps the conversation and retries later.
    """
    if dialect.name != "connect":
        response = await kimi.send(dialect.delete_call(conversation_id), token=token)
        # 404: already gone (deleted in the browser, or by another proxy sharing the store).
        if response.status_code >= 400 and response.status_code != 404:
            raise dialect.http_error(response.status_code, response.content)
        return
    known = _WORKING.get(kimi.base_url)
    if known is None and notes is not None:
        noted = await notes.note(_key(kimi.base_url))
        known = noted if noted in DELETE_CHAT_SERVICES else None
    order = [known] if known else []
    order += [s for s in DELETE_CHAT_SERVICES if s != known]
    gone = False
    for service in order:
        response = await kimi.send(delete_chat_call(conversation_id, service=service), token=token)
        outcome = delete_outcome(response.status_code, response.content)
        if outcome == "deleted":
            if _WORKING.get(kimi.base_url) != service:
                _WORKING[kimi.base_url] = service
                if notes is not None:
                    await notes.set_note(_key(kimi.base_url), service)
            return
        if outcome == "error":
            raise dialect.http_error(response.status_code, response.content)
        if outcome == "gone":
            if service == known:
                return  # the route that works says the chat is not there
            gone = True  # believed once the other route has had its say
    if not gone:
        raise RemoteProtocolError(
            "Kimi has no DeleteChat route under any known service", status=502, code="no_route"
        )
