"""The Anthropic Messages face of the relay: `POST /v1/messages`, `POST /v1/messages/count_tokens`.

One pipeline, three faces (docs/architecture.md): the request is checked and rewritten as an
OpenAI chat request by the translator (`translate_messages`), `ChatService.complete` runs it as
it runs every chat completion (accounts, failover, conversations, uploads, continuation), and
`MessagesReply` turns the chat chunks it produces into Anthropic's stream events
(`MessagesEncoder`) or, for `stream: false`, into one `Message` folded from the same events.

Auth: `x-api-key` or `Authorization: Bearer`, with the same tokens, gateway keys and
`require_key` rules as chat completions. `anthropic-version` and `anthropic-beta` are accepted
and not needed. Errors use Anthropic's shape (`translator/anthropic/_errors.py`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any, Final

from aiohttp import web

from addon.accounts._pool import AccessDenied, AccountPool
from addon.upstream._chat import ChatService, ChatStats
from translator import (
    LocalProtocolError,
    MessagesEncoder,
    TranslatorError,
    anthropic_error,
    encode_event,
    estimate_tokens,
    fold_message,
    plan_chat,
    translate_messages,
)

from ._body import DEFAULT_MAX_REQUEST_BYTES, read_json
from ._reply import SseResponse, json_response

__all__ = ["MessagesReply", "add_messages_routes", "anthropic_credentials"]

log = logging.getLogger("kimi_free_api")


#: the missing-key message in the Anthropic clients' terms (the shared one names Authorization)
MISSING_KEY: Final = "missing API key: send 'x-api-key: <Kimi refresh token or API key>'"


def anthropic_error_response(err: TranslatorError) -> web.Response:
    if err.code == "missing_token":
        err = TranslatorError(MISSING_KEY, status=err.status, type=err.type, code=err.code)
    status, body = anthropic_error(err)
    response = json_response(body, status)
    if err.retry_after is not None and status in (429, 529):
        response.headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    return response


def anthropic_credentials(request: web.Request) -> str:
    """The client's key: `x-api-key` (the Anthropic SDKs' and Claude Code's header), else the
    bearer value of `Authorization` (the SDKs' `auth_token`)."""
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


class MessagesReply:
    """The `Reply` of a Messages request (see addon/serve/_reply.py for the contract): Anthropic
    stream events as they come (`stream: true`), or one `Message` at the end."""

    def __init__(
        self,
        request: web.Request | None,
        *,
        model: str,
        input_tokens: int,
    ) -> None:
        #: the client's request when it asked for a stream, else None
        self._request = request
        self._model = model
        self._input_tokens = input_tokens
        self._encoder = self._new_encoder()
        self._events: list[dict[str, Any]] = []
        self._response: SseResponse | None = None
        self._lock = asyncio.Lock()

    def _new_encoder(self) -> MessagesEncoder:
        return MessagesEncoder(model=self._model, input_tokens=self._input_tokens)

    @property
    def started(self) -> bool:
        return self._response is not None

    async def _write(
        self, events: Sequence[dict[str, Any]], *, last: bool = False
    ) -> web.StreamResponse | None:
        """Write `events` (or keep them, for a JSON answer); with `last`, end the stream in the
        same write."""
        if self._request is None:
            self._events.extend(events)
            return None
        if self._response is None:
            if not events:
                return None
            self._response = await SseResponse.start(self._request)
        await self._response.send(b"".join(encode_event(e) for e in events), last=last)
        return self._response

    async def send(self, chunks: list[dict[str, Any]]) -> None:
        async with self._lock:
            await self._write(self._encoder.feed(chunks))

    async def keepalive(self) -> None:
        # Anthropic's own keep-alive: clients ignore `ping`, proxies in between see traffic.
        async with self._lock:
            if self._response is not None:
                await self._write([MessagesEncoder.ping()])

    async def finish(self, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        async with self._lock:
            events = self._encoder.feed(chunks) + self._encoder.close()
            response = await self._write(events, last=True)
            if response is None:  # not a stream: one Message, folded from the same events
                return json_response(fold_message(self._events))
            return response

    async def fail(self, err: TranslatorError) -> web.StreamResponse:
        async with self._lock:
            if self._response is None:
                return anthropic_error_response(err)
            # Already streaming: Anthropic's in-band `error` event ends the stream.
            await self._response.write_eof(encode_event(MessagesEncoder.error_event(err)))
            return self._response

    def note_stop_string(self, text: str) -> None:
        """The chat pipeline cut the answer at this stop sequence: `stop_reason` is
        `stop_sequence` and `stop_sequence` names it."""
        self._encoder.stop_sequence = text

    def reset(self) -> None:
        """Forget a failed attempt before failing over to another account."""
        if self._response is None:
            self._encoder = self._new_encoder()
            self._events.clear()


async def _read_json(request: web.Request, limit: int) -> Any:
    # Bounded, decompressed within the limit, strict (no NaN, no crash on deep nesting).
    return await read_json(request, limit=limit)


def add_messages_routes(
    app: web.Application,
    *,
    chat: ChatService,
    pool: AccountPool,
    stats_key: web.RequestKey[ChatStats],
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> None:
    """Register the Messages routes (before the catch-all 404)."""

    async def messages(request: web.Request) -> web.StreamResponse:
        stats = request[stats_key]
        try:
            call = translate_messages(await _read_json(request, max_request_bytes))
            # The same estimate count_tokens gives, on the whole prompt we would send.
            input_tokens = estimate_tokens(plan_chat(call.chat).prompt)
        except LocalProtocolError as err:
            stats.status = err.status
            return anthropic_error_response(err)
        reply = MessagesReply(
            request if call.stream else None, model=call.model, input_tokens=input_tokens
        )
        try:
            return await chat.complete(call.chat, anthropic_credentials(request), reply, stats)
        except Exception:
            # A bug of ours: still an Anthropic-shaped answer, and the traceback in the log.
            log.exception("internal error while serving %s %s", request.method, request.path)
            stats.status = 500
            return await reply.fail(TranslatorError("kimi-free-api hit an internal error"))

    async def count_tokens(request: web.Request) -> web.StreamResponse:
        try:
            call = translate_messages(await _read_json(request, max_request_bytes), count_only=True)
            await pool.resolve(anthropic_credentials(request))
            tokens = estimate_tokens(plan_chat(call.chat).prompt)
        except (LocalProtocolError, AccessDenied) as err:
            return anthropic_error_response(err)
        return json_response({"input_tokens": tokens})

    for prefix in ("/v1", ""):
        app.router.add_post(prefix + "/messages", messages)
        app.router.add_post(prefix + "/messages/count_tokens", count_tokens)
