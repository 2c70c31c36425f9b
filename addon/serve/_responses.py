"""The OpenAI Responses API face: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`.

One pipeline, another face: the request is mapped onto a chat completion request
(`translator.responses._request`), `ChatService.complete` serves it exactly as it serves chat
completions (accounts, failover, files, continuation, tools), and the reply here turns the chat
chunks into Responses events (`translator.responses._stream`) — streamed as SSE, or folded into
one Response object.

`previous_response_id`: a stored response (`_store_responses.py`) names the Kimi conversation
and account that answered it; the new request posts only its own input into that conversation.
An unknown, expired or foreign id is a 404, never a silent new chat. `store: false` stores
nothing (Codex sends it, with the whole history each turn: automatic continuation by history
applies then, as for chat).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from addon.accounts._pool import AccessDenied, AccountPool
from addon.store._store import Store, StoredResponse
from addon.upstream._chat import ChatService, ChatStats
from addon.upstream._dialects import CONNECT, LEGACY
from translator import LocalProtocolError, TranslatorError
from translator._sse import encode_sse_comment, encode_sse_event
from translator.responses._request import ResponsesPlan, plan_responses
from translator.responses._stream import ResponsesEncoder, fold_response

from ._body import DEFAULT_MAX_REQUEST_BYTES
from ._body import read_json as read_body_json
from ._reply import SseResponse, error_response, json_response

__all__ = ["ResponsesService"]

log = logging.getLogger("kimi_free_api")


def _not_found(response_id: str, *, param: str | None = None) -> TranslatorError:
    # OpenAI's wording and shape for an id it does not know (or that belongs to someone else).
    return LocalProtocolError(
        f"Response with id '{response_id}' not found.",
        status=404,
        param=param,
        code="response_not_found" if param is None else "previous_response_not_found",
    )


#: seconds a saved response is safe from pruning while its reply finishes (see prune_responses)
_PRUNE_GRACE = 300.0


class _Conversation:
    """Where the answer lives, as the chat service reports it (`note_conversation`)."""

    def __init__(self, account_id: str, dialect: str, conversation_id: str, parent_id: str):
        self.account_id = account_id
        self.dialect = dialect
        self.conversation_id = conversation_id
        self.parent_id = parent_id


class _ResponsesReply:
    """The chat service's `Reply` for the Responses face (see `_reply.Reply`): chunks in,
    Responses events out. Subclasses decide the wire form."""

    def __init__(
        self,
        plan: ResponsesPlan,
        *,
        new_encoder: Callable[[], ResponsesEncoder],
        wall_clock: Callable[[], float],
        on_done: Callable[[dict[str, Any], _Conversation], Awaitable[None]],
    ) -> None:
        self.plan = plan
        self._new_encoder = new_encoder
        self.encoder = new_encoder()
        self._wall_clock = wall_clock
        self._on_done = on_done
        self._conversation: _Conversation | None = None

    def note_conversation(
        self, account_id: str, dialect: str, conversation_id: str, parent_id: str
    ) -> None:
        """Called by the chat service before `finish`: where this answer lives in Kimi."""
        self._conversation = _Conversation(account_id, dialect, conversation_id, parent_id)

    async def _final(self, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        events = self.encoder.feed(chunks)
        events += self.encoder.close(completed_at=int(self._wall_clock()))
        if self._conversation is not None:
            await self._on_done(events[-1]["response"], self._conversation)
        return events

    def _error(self, err: TranslatorError) -> TranslatorError:
        return self.plan.rename(err)


class ResponsesSseReply(_ResponsesReply):
    """`stream: true`: events go out as they come; headers at the first event."""

    def __init__(self, request: web.Request, plan: ResponsesPlan, **kw: Any) -> None:
        super().__init__(plan, **kw)
        self._request = request
        self._response: SseResponse | None = None

    @property
    def started(self) -> bool:
        return self._response is not None

    async def _write(
        self, events: list[dict[str, Any]], *, last: bool = False
    ) -> web.StreamResponse:
        """Write `events`; with `last`, end the stream in the same write."""
        if self._response is None:
            self._response = await SseResponse.start(self._request)
        data = b"".join(encode_sse_event(e["type"], e) for e in events)
        await self._response.send(data, last=last)
        return self._response

    async def send(self, chunks: list[dict[str, Any]]) -> None:
        events = self.encoder.feed(chunks)
        if events:
            await self._write(events)

    async def keepalive(self) -> None:
        if self._response is not None:
            await self._response.write(encode_sse_comment("keep-alive"))

    async def finish(self, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        response = await self._write(await self._final(chunks), last=True)
        return response

    async def fail(self, err: TranslatorError) -> web.StreamResponse:
        err = self._error(err)
        if self._response is None:
            return error_response(err)
        # Already streaming: the Response fails in-band (Responses streams have no [DONE]).
        response = await self._write(self.encoder.fail(err), last=True)
        return response

    def reset(self) -> None:
        """A failover before anything was sent: start the events over."""
        self.encoder = self._new_encoder()


class ResponsesJsonReply(_ResponsesReply):
    """`stream: false`: collect the events, answer the folded Response object at the end."""

    def __init__(self, plan: ResponsesPlan, **kw: Any) -> None:
        super().__init__(plan, **kw)
        self._events: list[dict[str, Any]] = []

    @property
    def started(self) -> bool:
        return False  # nothing reaches the client before the end: failover stays possible

    async def send(self, chunks: list[dict[str, Any]]) -> None:
        self._events += self.encoder.feed(chunks)

    async def keepalive(self) -> None:
        return None

    async def finish(self, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        self._events += await self._final(chunks)
        return json_response(fold_response(self._events))

    async def fail(self, err: TranslatorError) -> web.StreamResponse:
        return error_response(self._error(err))

    def reset(self) -> None:
        self._events.clear()
        self.encoder = self._new_encoder()


class ResponsesService:
    def __init__(
        self,
        *,
        chat: ChatService,
        store: Store,
        pool: AccountPool,
        wall_clock: Callable[[], float],
        new_id: Callable[[], str] = lambda: "resp_" + secrets.token_hex(24),
    ) -> None:
        self.chat = chat
        self.store = store
        self.pool = pool
        self.wall_clock = wall_clock
        self.new_id = new_id

    async def create(
        self, body: Any, credentials: str, request: web.Request, stats: ChatStats
    ) -> web.StreamResponse:
        try:
            plan = plan_responses(body)  # every 400 first, before an id is looked up
            stats.model = plan.chat_request["model"]
            previous_id = body.get("previous_response_id")
            previous = await self._owned(previous_id, credentials, param="previous_response_id")
            if previous is not None:
                plan = await self._continuing(body, previous)
        except (LocalProtocolError, AccessDenied) as err:
            stats.status = err.status
            return error_response(err)
        response_id = self.new_id()
        created_at = int(self.wall_clock())

        def new_encoder() -> ResponsesEncoder:
            return ResponsesEncoder(response_id=response_id, created_at=created_at, echo=plan.echo)

        async def on_done(response: dict[str, Any], where: _Conversation) -> None:
            if not plan.store:
                return
            try:
                await self._save(plan, response, where, previous_id)
            except Exception as exc:
                # The answer itself is good: it still goes out, only a later
                # previous_response_id / GET will not find it.
                log.warning("could not store response %s: %s", response["id"], type(exc).__name__)

        kw: dict[str, Any] = {
            "new_encoder": new_encoder,
            "wall_clock": self.wall_clock,
            "on_done": on_done,
        }
        reply: ResponsesSseReply | ResponsesJsonReply = (
            ResponsesSseReply(request, plan, **kw)
            if plan.stream
            else ResponsesJsonReply(plan, **kw)
        )
        return await self.chat.complete(plan.chat_request, credentials, reply, stats)

    async def _save(
        self,
        plan: ResponsesPlan,
        response: dict[str, Any],
        where: _Conversation,
        previous_id: str | None,
    ) -> None:
        now = self.wall_clock()
        await self.store.save_response(
            StoredResponse(
                id=response["id"],
                account_id=where.account_id,
                conversation_id=where.conversation_id,
                previous_response_id=previous_id,
                dialect=where.dialect,
                response=response,
                input_items=list(plan.input_items),
                created_at=now,
            )
        )
        # The continuation needs the conversation's account and last message id; automatic
        # multi-turn may be off, so record them under this response's own key.
        await self.store.save_exchange(
            "response:" + response["id"],
            account_id=where.account_id,
            conversation_id=where.conversation_id,
            parent_message_id=where.parent_id,
            dialect=where.dialect,
            now=now,
        )
        await self.store.prune_responses(older_than=now - _PRUNE_GRACE)

    async def _continuing(self, body: Any, previous: StoredResponse) -> ResponsesPlan:
        """The plan of a request that continues `previous`."""
        if await self.store.latest_response_id(previous.conversation_id) == previous.id:
            return plan_responses(
                body, conversation_id=previous.conversation_id, continues=previous.id
            )
        # Kimi's copy of the conversation went on past this response (the client
        # branches): posting there would answer with turns the client left behind. The
        # branch starts a new Kimi chat with the history up to `previous` instead.
        return plan_responses(body, continues=previous.id, history=await self._history(previous))

    async def _history(self, previous: StoredResponse) -> list[Any]:
        """The items of the conversation up to and including `previous`: each stored
        response's input and output, from the one that began its Kimi conversation (whose
        input holds any history before it) to `previous`. Output items go back as input items
        unchanged; `plan_responses` reads messages and calls from them and skips the rest."""
        chain = [previous]
        while (parent_id := chain[-1].previous_response_id) is not None:
            parent = await self.store.get_response(parent_id)
            if parent is None or parent.conversation_id != chain[-1].conversation_id:
                break
            chain.append(parent)
        items: list[Any] = []
        for stored in reversed(chain):
            items += stored.input_items
            items += stored.response["output"]
        return items

    async def _owned(
        self, response_id: Any, credentials: str, *, param: str | None
    ) -> StoredResponse | None:
        """The stored response `response_id`, if the caller's accounts own it and its
        conversation lives; None when no id was given.

        Raises:
            LocalProtocolError: 404 otherwise (also for another client's response: its
                existence is not told).
            AccessDenied: the credentials name no account.
        """
        if response_id is None or response_id == "":
            return None
        accounts = await self.pool.resolve(credentials)
        stored = await self.store.get_response(response_id)
        if stored is None or stored.account_id not in {a.id for a in accounts}:
            raise _not_found(response_id, param=param)
        return stored

    async def retrieve(self, response_id: str, credentials: str) -> web.StreamResponse:
        try:
            stored = await self._owned(response_id, credentials, param=None)
        except (LocalProtocolError, AccessDenied) as err:
            return error_response(err)
        assert stored is not None
        return json_response(stored.response)

    async def delete(self, response_id: str, credentials: str) -> web.StreamResponse:
        try:
            stored = await self._owned(response_id, credentials, param=None)
        except (LocalProtocolError, AccessDenied) as err:
            return error_response(err)
        assert stored is not None
        account = await self.store.get_account(stored.account_id)
        await self.store.delete_responses(stored.conversation_id)
        if account is not None:
            dialect = CONNECT if stored.dialect == CONNECT.name else LEGACY
            # Deleted now (not after the TTL): the conversation holds what the client deletes.
            await self.chat.keeper.release(
                account, dialect, stored.conversation_id, keep=False, created_here=False
            )
        return json_response({"id": response_id, "object": "response", "deleted": True})


async def read_json(request: web.Request) -> Any:
    """The request body as JSON.

    Raises:
        LocalProtocolError: not JSON.
    """
    # Bounded, decompressed within the limit, strict (no NaN, no crash on deep nesting).
    return await read_body_json(request, limit=DEFAULT_MAX_REQUEST_BYTES)
