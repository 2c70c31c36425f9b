"""One chat completion, from a parsed OpenAI request to the last byte of the reply.

Order of work, and why:
1. plan (pure, may raise a 400 before anything touches Kimi);
2. pick an account (least busy healthy one) and its access token;
3. find the conversation: the client's `conversation_id`, a remembered exchange whose history
   this request extends (automatic multi-turn), a pre-created one, or a new one;
4. upload files, post the completion, translate the stream while it arrives; continue after a
   `length` stop inside the same reply;
5. remember the exchange for the next turn and schedule the conversation's deletion.

Any failure before the first chunk reached the client may fail over to the next account; after
it, the reply ends with an error event and `[DONE]` (see `_reply.py`). Every conversation this
process created is handed to the keeper for deletion, also when the client hangs up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from aiohttp import web

from addon.accounts._pool import (
    AccessDenied,
    AccountPool,
    AuthFailed,
    NoAccountAvailable,
    TransientFailure,
)
from addon.serve._reply import JsonReply, Reply, SseReply
from addon.store._store import Account
from translator import (
    ChatPlan,
    KimiCall,
    LocalProtocolError,
    RemoteProtocolError,
    TranslatorError,
)
from translator._usage import estimate_tokens
from translator.chat._messages import flatten_messages
from translator.chat._request import plan_chat
from translator.chat._response import ResponseTranslator
from translator.legacy._errors import retry_after_seconds
from translator.tools._prompt import plan_prompt
from translator.tools._shaper import AnswerShaper

from ._aiohttp_transport import body_reader
from ._conversations import ConversationKeeper, Resumption
from ._dialects import Dialect, choose_dialect
from ._fetch import FetchError
from ._kimi import KimiClient
from ._model_catalog import ModelCatalogs
from ._upload import UploadedFile, Uploader, UploadError

__all__ = ["ChatService", "ChatSettings", "ChatStats"]

log = logging.getLogger("kimi_free_api")

T = TypeVar("T")

#: statuses where another account may do better (auth, quota, rate limits, overload)
FAILOVER_STATUSES = frozenset({401, 402, 403, 429, 503})


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatSettings:
    base_url: str
    dialect: str = "auto"
    conversation_ttl: float = 600.0
    keepalive_interval: float = 15.0
    #: seconds: events closer together than this are written together (0: each at once)
    stream_flush_interval: float = 0.0
    #: no byte from Kimi for this long ends the reply with a 504-style error
    stall_timeout: float = 120.0
    max_continuations: int = 3
    auto_continue: bool = True


@dataclass(slots=True)
class ChatStats:
    """What the one log line per request reports (never a token, never message text)."""

    model: str = "-"
    dialect: str = "-"
    account_index: int | None = None
    status: int = 200
    upstream_calls: int = 0
    first_byte_at: float | None = None
    failovers: int = 0
    #: the account that served (for the admin page's per-account usage; never in the log line)
    account_id: str | None = None
    #: estimated tokens of the prompt and the answer (the `usage` heuristic)
    tokens: int = 0
    #: the error a reply ended with (for the admin page; a stream's comes after its 200)
    error: TranslatorError | None = None


class _BeforeStart(Exception):
    """A failure before the client saw a byte: the request may go to another account."""

    def __init__(self, error: RemoteProtocolError) -> None:
        super().__init__(error.message)
        self.error = error


class ChatService:
    def __init__(
        self,
        *,
        kimi: KimiClient,
        pool: AccountPool,
        keeper: ConversationKeeper,
        uploader: Uploader,
        settings: ChatSettings,
        wall_clock: Callable[[], float],
        monotonic: Callable[[], float],
        catalogs: ModelCatalogs | None = None,
    ) -> None:
        self.catalogs = catalogs
        self.kimi = kimi
        self.pool = pool
        self.keeper = keeper
        self.uploader = uploader
        self.settings = settings
        self.wall_clock = wall_clock
        self.monotonic = monotonic

    async def complete(
        self, body: Any, credentials: str, reply: Reply, stats: ChatStats
    ) -> web.StreamResponse:
        try:
            if not isinstance(body, Mapping):
                raise LocalProtocolError("the request body must be a JSON object", param=None)
            plan = plan_chat(body)
            stats.model = plan.model
            accounts = await self.pool.resolve(credentials)
        except (LocalProtocolError, AccessDenied) as err:
            stats.status = err.status
            return await reply.fail(err)
        return await self._with_failover(plan, accounts, reply, stats)

    async def _with_failover(
        self, plan: ChatPlan, accounts: Sequence[Account], reply: Reply, stats: ChatStats
    ) -> web.StreamResponse:
        prefer = None
        if len(accounts) > 1 and (self.settings.auto_continue or plan.conversation_id):
            prefer = await self.keeper.owner(accounts, plan)
        try:
            lease = await self.pool.acquire(accounts, prefer=prefer)
        except NoAccountAvailable as err:
            stats.status = err.status
            return await reply.fail(err)
        async with lease:
            while True:
                account = lease.account
                assert account is not None
                stats.account_index = lease.index
                stats.account_id = account.id
                try:
                    result = await self._attempt(plan, account, reply, stats)
                except _BeforeStart as exc:
                    error = exc.error
                    failover = error.status in FAILOVER_STATUSES
                    if failover and await lease.fail_over(error) is not None:
                        stats.failovers += 1
                        reset = getattr(reply, "reset", None)
                        if reset is not None:
                            reset()
                        continue
                    if error.status not in FAILOVER_STATUSES:
                        await self.pool.mark_for(account, error)
                    stats.status = error.status
                    return await reply.fail(error)
                return result

    async def _token(self, account: Account, *, refused: str | None = None) -> str:
        if refused is not None:
            await self.pool.invalidate_access(account, refused)
        try:
            return await self.pool.access_token(account)
        except AuthFailed as exc:
            raise _BeforeStart(
                RemoteProtocolError(
                    f"the Kimi account's token is no longer valid: {exc}",
                    status=401,
                    type="authentication_error",
                    code="invalid_kimi_token",
                )
            ) from exc
        except TransientFailure as exc:
            raise _BeforeStart(
                RemoteProtocolError(f"cannot refresh the Kimi token: {exc}", status=503)
            ) from exc

    async def _attempt(
        self, plan: ChatPlan, account: Account, reply: Reply, stats: ChatStats
    ) -> web.StreamResponse:
        dialect = choose_dialect(
            self.settings.dialect, self.settings.base_url, account.view.dialect
        )
        stats.dialect = dialect.name
        token = await self._token(account)
        if dialect.name == "connect" and self.catalogs is not None:
            plan = await self.catalogs.apply(plan, token)  # Kimi's own model names
        resumption = await self._resumption(plan, account)
        if resumption is not None:
            plan = resumption.plan
        if isinstance(reply, JsonReply):
            reply.prompt_text = plan.prompt
        conversation_id = resumption.conversation_id if resumption else ""
        parent_id = resumption.parent_id if resumption else ""
        created_here = False
        translator: ResponseTranslator | None = None
        finished = False
        try:
            if not conversation_id and dialect.creates_conversation_first:
                conversation_id, token = await self._refreshing(
                    account,
                    token,
                    lambda t: self.keeper.open_conversation(account, dialect, t, plan.flags),
                )
                created_here = True
            opened = conversation_id
            files, token = await self._refreshing(
                account,
                token,
                lambda t: self._upload(plan, account, dialect, t, opened),
            )
            created_at = int(self.wall_clock())

            def new_translator() -> ResponseTranslator:
                return ResponseTranslator(
                    dialect.decoder(),
                    completion_id=conversation_id or None,
                    model=plan.model,
                    created=created_at,
                    silent=plan.flags.silent,
                    include_usage=plan.include_usage,
                    prompt_text=plan.prompt,
                    max_continuations=self.settings.max_continuations,
                    shaper=AnswerShaper.for_plan(plan),
                )

            call = dialect.completion_call(
                plan, conversation_id=conversation_id, parent_id=parent_id, files=files
            )

            async def first_stream(access: str) -> ResponseTranslator:
                # A fresh translator per try: a failed one stays in its error state. It is
                # also kept outside, where the error and hang-up paths below read it.
                nonlocal translator
                translator = fresh = new_translator()
                await self._stream(call, access, dialect, fresh, reply, stats)
                return fresh

            live, token = await self._refreshing(
                account,
                token,
                first_stream,
                retry_allowed=lambda: (
                    not reply.started and (translator is None or not translator.started)
                ),
            )
            while (segment := live.continuation_segment) is not None:
                follow = dialect.continuation_call(conversation_id, segment, plan.flags)
                if follow is None:
                    break
                live.begin_continuation(dialect.decoder())
                await self._stream(follow, token, dialect, live, reply, stats)
            if not conversation_id and live.conversation_id:
                conversation_id = live.conversation_id
                created_here = True
            final = live.close()
            if live.repair_prompt is not None:
                # One invisible repair turn in the same conversation (docs/tools.md): an
                # invalid tool call or JSON answer, or no call where one was required.
                await reply.send(final)
                repair = dialect.completion_call(
                    dataclasses.replace(plan, prompt=live.repair_prompt, files=()),
                    conversation_id=conversation_id,
                    parent_id=live.last_message_id or "",
                    files=[],
                )
                live.begin_repair(dialect.decoder())
                await self._stream(repair, token, dialect, live, reply, stats)
                final = live.close()
            note = getattr(reply, "note_conversation", None)
            if note is not None and conversation_id:
                # A face that stores answers (the Responses API) learns where this one lives.
                note(account.id, dialect.name, conversation_id, live.last_message_id or "")
            stopped = getattr(reply, "note_stop_string", None)
            if stopped is not None and live.stop_string is not None:
                # A face that reports which stop string ended the answer (Anthropic's
                # `stop_sequence`) learns it before the last events are written.
                stopped(live.stop_string)
            response = await reply.finish(final)
            stats.tokens = estimate_tokens(plan.prompt) + estimate_tokens(live.content)
            # A moderation stop ends the conversation's use: it is deleted at once.
            finished = live.finish_reason != "content_filter"
            if (
                finished
                and conversation_id
                and (self.settings.auto_continue or plan.conversation_id)
            ):
                await self.keeper.remember(
                    account,
                    dialect,
                    messages=resumption.full_messages if resumption else plan.messages,
                    answer=live.answer_text,
                    conversation_id=conversation_id,
                    parent_id=live.last_message_id or "",
                )
            return response
        except (FetchError, UploadError) as exc:
            raise _BeforeStart(
                RemoteProtocolError(
                    str(exc), status=exc.status, type=exc.type, param=exc.param, code=exc.code
                )
            ) from exc
        except RemoteProtocolError as err:
            stats.status = err.status
            if translator is not None and translator.conversation_id and not conversation_id:
                conversation_id = translator.conversation_id
                created_here = True
            if (translator is None or not translator.started) and not reply.started:
                raise _BeforeStart(err) from err
            stats.error = err
            return await reply.fail(err)
        finally:
            if not conversation_id and translator is not None and translator.conversation_id:
                # Connect: the stream call itself created the chat, and a hang-up (a
                # CancelledError) skips the lines above that learn its id.
                conversation_id = translator.conversation_id
                created_here = True
            if conversation_id:
                # Errors, moderation stops and hang-ups end the conversation's use at once;
                # a good reply keeps it for `conversation_ttl` so the next turn can continue it.
                await self.keeper.release(
                    account, dialect, conversation_id, keep=finished, created_here=created_here
                )

    async def _refreshing(
        self,
        account: Account,
        token: str,
        action: Callable[[str], Awaitable[T]],
        *,
        retry_allowed: Callable[[], bool] = lambda: True,
    ) -> tuple[T, str]:
        """Run `action(token)`; on a 401 (the cached access token died before we expected:
        legacy tokens carry no expiry, and Kimi may end a session early) refresh once and run it
        again, before the account is blamed. Returns the result and the token in use."""
        try:
            result = await action(token)
        except TranslatorError as err:
            if err.status != 401 or not retry_allowed():
                raise
        else:
            await self.pool.confirm(account)  # the account's tokens work: a retired one can go
            return result, token
        token = await self._token(account, refused=token)
        result = await action(token)
        await self.pool.confirm(account)
        return result, token

    async def _resumption(self, plan: ChatPlan, account: Account) -> Resumption | None:
        if plan.conversation_id:
            return await self.keeper.resume_by_id(account, plan)
        if self.settings.auto_continue and len(plan.messages) > 1:
            found = await self.keeper.find(account, plan.messages)
            if found is not None:
                conversation_id, parent_id, prefix = found
                new_turns = plan.messages[prefix:]
                new_plan = dataclasses.replace(
                    plan,
                    prompt=plan_prompt(plan, flatten_messages(new_turns)),
                    files=tuple(f for m in new_turns for f in m.files),
                )
                return Resumption(
                    plan=new_plan,
                    conversation_id=conversation_id,
                    parent_id=parent_id,
                    full_messages=plan.messages,
                )
        return None

    async def _upload(
        self,
        plan: ChatPlan,
        account: Account,
        dialect: Dialect,
        token: str,
        conversation_id: str,
    ) -> list[UploadedFile]:
        if not plan.files:
            return []

        async def execute(call: KimiCall) -> httpx.Response:
            return await self.kimi.send(call, token=token)

        return await self.uploader.upload_all(
            account.id,
            plan.files,
            conversation_id=conversation_id or None,
            execute=execute,
            dialect=dialect.name,
        )

    async def _stream(
        self,
        call: KimiCall,
        token: str,
        dialect: Dialect,
        translator: ResponseTranslator,
        reply: Reply,
        stats: ChatStats,
    ) -> None:
        """Post one streaming call and pump its answer through the translator into the reply."""
        async with self.kimi.stream(call, token=token) as resp:
            if resp.status_code >= 400 or _is_json(resp):
                body = await resp.aread()
                error = dialect.http_error(resp.status_code, body)
                # Kimi's Retry-After decides how long the account cools (and what we tell the
                # client); without it the pool uses `account_cooldown`.
                error.retry_after = retry_after_seconds(resp.headers, now=self.wall_clock())
                raise error
            await self._pump(resp, translator, reply, stats)

    async def _pump(
        self,
        resp: httpx.Response,
        translator: ResponseTranslator,
        reply: Reply,
        stats: ChatStats,
    ) -> None:
        """Move Kimi's body through the translator to the client as it arrives.

        One task reads whatever has arrived since its last turn, translates it and writes it,
        so under load the client gets fewer, larger writes instead of one per upstream read,
        and a client that reads slower than Kimi writes stops the reading (the write waits for
        the client; meanwhile the HTTP client buffers a bounded amount and then stops reading
        Kimi's socket). While nothing arrives it sends keep-alive comments, and after
        `stall_timeout` of silence it gives up with a 504.

        `stream_flush_interval`: when events arrive closer together than this, the ones that
        follow a write wait for the rest of the interval and go out together (one write, one
        pass through mitmproxy, instead of one per event). The first write and every event
        that arrives later than the interval after the previous write go out at once, so the
        first token is never held and a stream slower than one event per interval is not
        touched.
        """
        body = body_reader(resp)
        interval = self.settings.keepalive_interval
        gap = self.settings.stream_flush_interval
        loop = asyncio.get_running_loop()
        written_at = -gap
        silent_for = 0.0
        while True:
            try:
                data = await asyncio.wait_for(body.read(), interval)
                if gap and data:
                    hold = written_at + gap - loop.time()
                    if hold > 0:
                        data += await body.gather(hold)
            except TimeoutError:
                silent_for += interval
                if silent_for >= self.settings.stall_timeout:
                    raise RemoteProtocolError(
                        f"Kimi sent nothing for {silent_for:.0f} s; giving up",
                        status=504,
                        code="upstream_stalled",
                    ) from None
                if reply.started:
                    await reply.keepalive()
                continue
            except Exception as exc:
                mapped = _transport_error(exc, self.settings.stall_timeout)
                if mapped is exc:
                    raise
                raise mapped from exc
            if not data:
                return
            silent_for = 0.0
            if isinstance(reply, SseReply):
                # The hot path: the translator writes SSE bytes itself (the same bytes as
                # encode_sse of its chunks, without building them).
                out = translator.feed_sse(data)
                if out:
                    if stats.first_byte_at is None:
                        stats.first_byte_at = self.monotonic()
                    await reply.send_sse(out)
                    written_at = loop.time()
            else:
                chunks = translator.feed(data)
                if chunks:
                    if stats.first_byte_at is None:
                        stats.first_byte_at = self.monotonic()
                    await reply.send(chunks)
                    if reply.started:  # a streamed face; a JSON reply writes nothing yet
                        written_at = loop.time()
            if translator.cut:
                # A stop string or the token limit ended the answer: stop reading, and leaving
                # the stream closes it, so Kimi stops sending.
                return


def _is_json(resp: httpx.Response) -> bool:
    # The legacy API answers some refusals with HTTP 200 and a JSON error body.
    content_type: str = resp.headers.get("content-type", "")
    return content_type.startswith("application/json")


def _transport_error(error: Exception, stall_timeout: float) -> Exception:
    """What to raise for how reading Kimi's body failed: our error tree for the HTTP client's
    errors, anything else as it is."""
    if isinstance(error, httpx.TimeoutException):
        # httpx's read timeout is the stall timeout too (_runtime.py): the same verdict as the
        # silence count, whichever clock fires first.
        return RemoteProtocolError(
            f"Kimi sent nothing for {stall_timeout:.0f} s; giving up",
            status=504,
            code="upstream_stalled",
        )
    if isinstance(error, httpx.HTTPError):
        return RemoteProtocolError(
            f"the connection to Kimi broke mid-answer: {type(error).__name__}",
            status=502,
            code="upstream_disconnected",
        )
    return error
