"""Deletions per conversation, counted by the fake Kimi: the proof that cleanup deletes each
conversation the proxy used exactly once, also under load and with `conversation_ttl=0`.

A phase remembers the conversations its measured completions streamed from (the completion
requests the fake recorded during the phase). Once the proxy has stopped (its shutdown deletes
what it still holds), every delete request the fake received is attributed to the conversation
it names, whatever it was answered (a duplicate gets a 404 and still counts).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["conversation_of", "count_deletes", "phase_conversations"]


def conversation_of(request: Any) -> str | None:
    """The conversation a recorded completion or delete request names, else None.

    Legacy: `/api/chat/<id>/completion/stream` and `DELETE /api/chat/<id>`; Connect: the JSON
    body's `chat_id` (DeleteChat) or `chat.id` / `chat_id` (Chat)."""
    path: str = request.path
    if path.startswith("/api/chat/"):
        rest = path[len("/api/chat/") :]
        ident = rest.split("/", 1)[0]
        return ident or None
    body = request.json
    if isinstance(body, dict):
        ident = body.get("chat_id")
        if ident is None and isinstance(body.get("chat"), dict):
            ident = body["chat"].get("id")
        return ident if isinstance(ident, str) and ident else None
    return None


def phase_conversations(requests: Iterable[Any]) -> set[str]:
    """The conversations the completion streams among `requests` used."""
    used: set[str] = set()
    for request in requests:
        if request.route in ("completion", "chat"):
            ident = conversation_of(request)
            if ident is not None:
                used.add(ident)
    return used


def count_deletes(
    requests: Sequence[Any], conversations: set[str], completions: int, live: set[str]
) -> dict[str, Any]:
    """DELETEs the fake received for `conversations` (those one phase used), per conversation
    and per completion, how many were answered other than 2xx, and how many of the
    conversations are still alive (left behind)."""
    per_conversation: collections.Counter[str] = collections.Counter()
    refused = 0
    for request in requests:
        if request.route != "delete":
            continue
        ident = conversation_of(request)
        if ident is None or ident not in conversations:
            continue
        per_conversation[ident] += 1
        if request.status is None or not 200 <= request.status < 300:
            refused += 1
    total = sum(per_conversation.values())
    n_conv = len(conversations)
    return {
        "conversations": n_conv,
        "deletes": total,
        "deletes_per_conversation": round(total / n_conv, 3) if n_conv else None,
        "deletes_per_completion": round(total / completions, 3) if completions else None,
        "deletes_not_2xx": refused,
        "max_deletes_one_conversation": max(per_conversation.values(), default=0),
        "left_behind": len(conversations & live),
    }
