"""Stored Responses API answers (`previous_response_id`, `GET/DELETE /v1/responses/{id}`).

A row says which Kimi conversation answered a response, with which account, and keeps the
Response object and the request's input items. It lives exactly as long as that conversation:
a response is usable while its conversation is still ours and not yet deleted (queued in
`pending_deletions`, see `_conversations.py`), so the conversation TTL is the response TTL, and
`prune_responses` drops the rows whose conversation is gone. The table is migration 3 in
`_records.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._base import StoreBase

__all__ = ["ResponseMethods", "StoredResponse"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredResponse:
    id: str
    account_id: str
    conversation_id: str
    previous_response_id: str | None
    dialect: str | None
    #: the Response object as the client got it
    response: dict[str, Any]
    input_items: list[Any]
    created_at: float


_COLUMNS = (
    "id, account_id, conversation_id, previous_response_id, dialect, response, input_items,"
    " created_at"
)


class ResponseMethods(StoreBase):
    """The `responses` table. Reads answer only rows whose conversation still lives."""

    async def save_response(self, stored: StoredResponse) -> None:
        async with self._write() as db:
            await db.execute(
                f"INSERT OR REPLACE INTO responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    stored.account_id,
                    stored.conversation_id,
                    stored.previous_response_id,
                    stored.dialect,
                    json.dumps(stored.response, ensure_ascii=False),
                    json.dumps(stored.input_items, ensure_ascii=False),
                    stored.created_at,
                ),
            )

    async def get_response(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None when unknown or its conversation is gone."""
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND conversation_id IN"
            " (SELECT conversation_id FROM pending_deletions)",
            (response_id,),
        )
        if not rows:
            return None
        row = dict(rows[0])
        row["response"] = json.loads(row["response"])
        row["input_items"] = json.loads(row["input_items"])
        return StoredResponse(**row)

    async def latest_response_id(self, conversation_id: str) -> str | None:
        """The newest stored response of a conversation (the one Kimi's copy ends with)."""
        rows = await self._read(
            "SELECT id FROM responses WHERE conversation_id = ? ORDER BY created_at DESC LIMIT 1",
            (conversation_id,),
        )
        return str(rows[0]["id"]) if rows else None

    async def delete_responses(self, conversation_id: str) -> int:
        """Forget every response of a conversation; returns how many."""
        async with self._write() as db:
            return (
                await db.execute(
                    "DELETE FROM responses WHERE conversation_id = ?", (conversation_id,)
                )
            ).rowcount

    async def prune_responses(self, *, older_than: float) -> int:
        """Drop the responses saved before `older_than` whose conversation was deleted; returns
        how many. (A conversation the answer itself created is queued only after the answer
        is saved: younger rows are left alone.)"""
        async with self._write() as db:
            return (
                await db.execute(
                    "DELETE FROM responses WHERE created_at < ? AND conversation_id NOT IN"
                    " (SELECT conversation_id FROM pending_deletions)",
                    (older_than,),
                )
            ).rowcount
