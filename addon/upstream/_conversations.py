"""The life of the Kimi conversations this proxy creates: open, remember, continue, delete.

- Open: a legacy conversation must exist before the completion call. Each healthy account keeps a
  few conversations created in advance (`precreate`), so a new chat posts its completion at once
  instead of paying one more round trip on the critical path.
- Remember: after a good reply the keeper stores a key of the exchange (a hash of the normalised
  messages plus the answer) with its conversation. A later request whose history is exactly that
  exchange plus new turns continues the conversation with only the new turns.
- Delete: every conversation the proxy created is deleted once it has been idle for
  `conversation_ttl` (0: as soon as the reply ends), also after errors and hang-ups, and all of
  them on shutdown. Deletions are persisted in the store before they are due, so a restart still
  performs them. One due at once (an ended reply at TTL 0, an error, a hang-up) is queued already
  claimed by this process and deleted straight away; the rest wait for a cleanup pass, which
  claims them first, so two passes or processes never delete one conversation twice.
  Conversations the user made in the browser are never touched: only ids the store knows as
  ours are ever deleted.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from addon.accounts._pool import Account, AccountPool
from addon.store._store import PendingDeletion, Store
from translator import ChatPlan, Message, ModelFlags, RemoteProtocolError
from translator._plan import InlineFile, UrlFile

from ._delete_chat import delete_conversation
from ._dialects import CONNECT, LEGACY, Dialect
from ._kimi import KimiClient

__all__ = ["ConversationKeeper", "Resumption", "exchange_key", "prefix_keys"]

log = logging.getLogger("kimi_free_api")


@dataclass(frozen=True, slots=True)
class Resumption:
    """A request that continues an existing Kimi conversation."""

    plan: ChatPlan
    conversation_id: str
    parent_id: str
    full_messages: tuple[Message, ...]


def _file_identity(source: UrlFile | InlineFile) -> str:
    if isinstance(source, UrlFile):
        return "url:" + source.url
    return "sha256:" + hashlib.sha256(source.data).hexdigest()


_KEY_SEED = hashlib.sha256(b"kimi-free-api exchange key v3").digest()


def _message_digest(message: Message) -> bytes:
    """The digest of one normalised message: role, trimmed text and file identities, each
    length-prefixed so that no two different messages encode alike."""
    digest = hashlib.sha256()
    for part in (message.role, message.text.strip(), *map(_file_identity, message.files)):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()


def prefix_keys(messages: Sequence[Message]) -> list[str]:
    """`exchange_key(messages[:n])` for every n from 1 to len(messages), in one pass.

    The key is a running hash: each message is hashed once and chained onto the digest of the
    prefix before it, so all prefixes of a 10,000-message history cost as much as hashing it
    once (hashing every prefix anew was quadratic, and froze the proxy for over a minute)."""
    keys: list[str] = []
    state = _KEY_SEED
    for message in messages:
        state = hashlib.sha256(state + _message_digest(message)).digest()
        keys.append(state.hex())
    return keys


def exchange_key(messages: Sequence[Message]) -> str:
    """A stable hash of a conversation as the client sees it. Whitespace at the ends of a
    message is ignored (clients trim differently); anything else that changes is a new chat."""
    keys = prefix_keys(messages)
    return keys[-1] if keys else _KEY_SEED.hex()


def _candidate_keys(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """(prefix length, key) of every prefix that could be a remembered exchange (it ends in an
    assistant turn and leaves at least one new message), longest first."""
    keys = prefix_keys(messages[:-1])
    return [
        (end, keys[end - 1])
        for end in range(len(messages) - 1, 0, -1)
        if messages[end - 1].role == "assistant"
    ]


class ConversationKeeper:
    def __init__(
        self,
        *,
        kimi: KimiClient,
        pool: AccountPool,
        store: Store,
        dialect_for: Callable[[Account], Dialect],
        conversation_ttl: float,
        clock: Callable[[], float],
        precreate: int = 1,
        precreate_max_age: float = 3600.0,
        tick: float = 1.0,
    ) -> None:
        self.kimi = kimi
        self.pool = pool
        self.store = store
        self.dialect_for = dialect_for
        self.ttl = conversation_ttl
        self.clock = clock
        self.precreate = precreate
        self.precreate_max_age = precreate_max_age
        self.tick = tick
        self._spare: dict[str, list[tuple[str, float]]] = {}
        self._refilling: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        #: a cleanup pass is running in this process
        self._passing = False
        #: the task running the cleanup pass now, if one does; shutdown lets it finish
        self._pass_task: asyncio.Task[Any] | None = None
        #: set by shutdown: no new passes; the periodic loop ends after its current one
        self._closing = False
        #: who claims due deletions in the store (the pool's id: unique per process)
        self.claimer = pool.lock_owner
        #: seconds a claim on a due deletion lasts (a crashed claimer's rows come back)
        self.claim_ttl = 120.0
        #: the most due deletions one claim takes (a pass claims again only after a full one)
        self.claim_batch = 200
        #: DELETE calls in flight at most, from cleanup passes and replies together
        self._delete_slots = asyncio.Semaphore(16)
        #: deletions of conversations whose reply just ended (TTL 0); shutdown awaits them
        self._deleting: set[asyncio.Task[None]] = set()
        #: conversations whose DELETE this process is sending now (a pass takes this process's
        #: own claims again, so it must skip these)
        self._in_delete: set[str] = set()
        self.deleted = 0
        self.delete_failures = 0

    # -- opening ------------------------------------------------------------------------------

    async def open_conversation(
        self, account: Account, dialect: Dialect, token: str, flags: ModelFlags
    ) -> str:
        spare = self._spare.get(account.id)
        # Only default-agent conversations are kept spare: an agent chat must be created for it.
        while spare and flags.kimiplus_id == "kimi":
            conversation_id, created_at = spare.pop(0)
            # An old spare may be due for deletion by the cleanup loop: leave it to it.
            if self.clock() - created_at < self.precreate_max_age * 0.9:
                self._refill_later(account, dialect)
                return conversation_id
        conversation_id = await self._create(account, dialect, token, flags)
        if flags.kimiplus_id == "kimi":
            self._refill_later(account, dialect)
        return conversation_id

    async def _create(
        self, account: Account, dialect: Dialect, token: str, flags: ModelFlags
    ) -> str:
        call = dialect.create_call(flags)
        assert call is not None, "only dialects that create conversations first call this"
        response = await self.kimi.send(call, token=token)
        body = response.content
        if response.status_code >= 400:
            raise dialect.http_error(response.status_code, body)
        try:
            conversation_id = str(json.loads(body)["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise dialect.http_error(502, body) from exc
        # Persist ownership at once with a deletion far enough out for the reply; a crash right
        # now still leaves the id in the store for the next start to delete.
        await self._hold(account.id, conversation_id, dialect.name)
        return conversation_id

    def _refill_later(self, account: Account, dialect: Dialect) -> None:
        if self.precreate <= 0 or not dialect.creates_conversation_first:
            return
        if account.id in self._refilling:
            return
        self._refilling.add(account.id)
        self._spawn(self._refill(account, dialect))

    async def _refill(self, account: Account, dialect: Dialect) -> None:
        # mitmproxy runs tasks eagerly (Python 3.12's eager task factory): without this yield
        # the spare's create call would be built and sent before the completion that took
        # the previous spare, on the critical path of the first token.
        await asyncio.sleep(0)
        try:
            spare = self._spare.setdefault(account.id, [])
            while len(spare) < self.precreate:
                token = await self.pool.access_token(account)
                try:
                    conversation_id = await self._create(account, dialect, token, ModelFlags())
                except RemoteProtocolError as exc:
                    if exc.status != 401:
                        raise
                    # The cached access token expired early: drop it so the next use refreshes.
                    await self.pool.invalidate_access(account, token)
                    raise
                spare.append((conversation_id, self.clock()))
        except Exception as exc:
            # Spares are an optimisation; the next chat creates its conversation inline.
            log.warning("could not pre-create a conversation: %s", type(exc).__name__)
        finally:
            self._refilling.discard(account.id)

    # -- continuing ---------------------------------------------------------------------------

    async def remember(
        self,
        account: Account,
        dialect: Dialect,
        *,
        messages: Sequence[Message],
        answer: str,
        conversation_id: str,
        parent_id: str,
    ) -> None:
        if self.ttl <= 0:
            # The conversation is deleted as soon as this reply ends: nothing can continue it.
            return
        history = (*messages, Message(role="assistant", text=answer))
        await self.store.save_exchange(
            exchange_key(history),
            account_id=account.id,
            conversation_id=conversation_id,
            parent_message_id=parent_id,
            dialect=dialect.name,
            now=self.clock(),
        )

    async def find(
        self, account: Account, messages: Sequence[Message]
    ) -> tuple[str, str, int] | None:
        """The conversation whose remembered exchange is the longest prefix of `messages`
        ending in an assistant turn: (conversation id, parent message id, prefix length)."""
        candidates = _candidate_keys(messages)
        known = await self.store.find_exchanges([key for _, key in candidates])
        for end, key in candidates:
            found = known.get(key)
            # Another account's conversation cannot be continued with this account's token.
            if found is not None and found.account_id == account.id:
                if not await self.store.is_pending(found.conversation_id):
                    return None  # already deleted: start afresh
                latest = await self.store.latest_exchange_for(found.conversation_id)
                if latest is None or latest.key != found.key:
                    # The conversation went on past this point: the client regenerated or
                    # edited a later turn. Kimi's copy holds the discarded turns: start afresh.
                    return None
                await self._hold(account.id, found.conversation_id, found.dialect)
                return found.conversation_id, found.parent_message_id, end
        return None

    async def owner(self, accounts: Sequence[Account], plan: ChatPlan) -> str | None:
        """The id of the client's account holding the conversation this request continues
        (by `conversation_id` or by history), so the pool can prefer it: another account
        cannot continue it."""
        ids = {a.id for a in accounts}
        if plan.conversation_id:
            latest = await self.store.latest_exchange_for(plan.conversation_id)
            return latest.account_id if latest and latest.account_id in ids else None
        candidates = _candidate_keys(plan.messages)
        known = await self.store.find_exchanges([key for _, key in candidates])
        for _, key in candidates:
            found = known.get(key)
            if found is not None and found.account_id in ids:
                return found.account_id
        return None

    async def resume_by_id(self, account: Account, plan: ChatPlan) -> Resumption:
        assert plan.conversation_id is not None
        latest = await self.store.latest_exchange_for(plan.conversation_id)
        parent = latest.parent_message_id if latest is not None else ""
        if await self.store.is_pending(plan.conversation_id):
            await self._hold(account.id, plan.conversation_id, latest.dialect if latest else None)
        return Resumption(
            plan=plan,
            conversation_id=plan.conversation_id,
            parent_id=parent,
            full_messages=plan.messages,
        )

    # -- deleting -----------------------------------------------------------------------------

    async def release(
        self,
        account: Account,
        dialect: Dialect,
        conversation_id: str,
        *,
        keep: bool,
        created_here: bool,
    ) -> None:
        """The reply using `conversation_id` ended; delete it after the TTL (now if not `keep`).
        Only conversations this proxy created are ever scheduled."""
        if not created_here and not await self.store.is_pending(conversation_id):
            return
        delay = self.ttl if keep else 0.0
        now = self.clock()
        if delay > 0:
            await self.store.schedule_deletion(
                account.id, conversation_id, dialect=dialect.name, due_at=now + delay
            )
            return
        # Due now: queued already claimed by this process, and deleted by this process at
        # once, so no cleanup pass has to claim it (one write per reply less at TTL 0). It is
        # marked in-delete before the write: a pass of ours (which takes our own claims again)
        # skips it from the moment the claim exists. During shutdown the claim is left to
        # shutdown's final pass.
        delete_here = not self._closing and conversation_id not in self._in_delete
        if delete_here:
            self._in_delete.add(conversation_id)
        try:
            await self.store.schedule_claimed_deletion(
                account.id,
                conversation_id,
                dialect=dialect.name,
                now=now,
                owner=self.claimer,
                claim_ttl=self.claim_ttl,
            )
        except BaseException:
            if delete_here:
                self._in_delete.discard(conversation_id)
            raise
        if delete_here:
            task = asyncio.get_running_loop().create_task(
                self._delete_claimed(account, conversation_id, dialect.name),
                context=contextvars.Context(),  # not counted as the reply's calls
            )
            self._deleting.add(task)
            task.add_done_callback(self._deleting.discard)

    async def _delete_claimed(
        self, account: Account, conversation_id: str, dialect_name: str
    ) -> None:
        try:
            async with self._delete_slots:
                await self._delete_once(account.id, conversation_id, dialect_name, 0, account)
        finally:
            self._in_delete.discard(conversation_id)

    async def _hold(self, account_id: str, conversation_id: str, dialect: str | None) -> None:
        """Mark a conversation ours and in use: its deletion is pushed out while a reply runs,
        and it is persisted, so a crash still leaves it for the next start to delete."""
        await self.store.schedule_deletion(
            account_id,
            conversation_id,
            dialect=dialect,
            due_at=self.clock() + max(self.ttl, self.precreate_max_age),
        )

    async def _pass(self) -> None:
        """One cleanup pass; at most one runs per process (overlapping passes would claim and
        delete side by side)."""
        if self._passing:
            return
        self._passing = True
        self._pass_task = asyncio.current_task()
        try:
            await self.delete_due()
        finally:
            self._passing = False
            self._pass_task = None

    async def delete_due(self, *, everything: bool = False) -> None:
        """Delete every conversation whose time has come (all of them with `everything`), up
        to 16 at a time and `claim_batch` per claim. Each is claimed in the store before its
        DELETE, so no other pass or process sharing the store deletes it too. A failed
        deletion is rescheduled with backoff and not retried within the same pass."""
        tried: set[str] = set()
        async def delete(pending: PendingDeletion) -> None:
            async with self._delete_slots:
                await self._delete(
                    pending.account_id, pending.conversation_id, pending.dialect, pending.attempts
                )

        limit = self.claim_batch
        while True:
            claimed = await self.store.claim_due_deletions(
                self.clock(),
                owner=self.claimer,
                claim_ttl=self.claim_ttl,
                due_by=float("inf") if everything else None,
                limit=limit,
            )
            batch = [
                p
                for p in claimed
                if p.conversation_id not in tried and p.conversation_id not in self._in_delete
            ]
            tried.update(p.conversation_id for p in batch)
            await asyncio.gather(*(delete(p) for p in batch))
            # A short batch was everything due. What falls due meanwhile waits for the next
            # tick (a reply's own conversation never does: `release` deletes it): one claim
            # per pass, not two. At shutdown a failed deletion is due again at once, so that
            # pass goes on until only tried ones are left.
            if not batch or (len(claimed) < limit and not everything):
                return

    async def _delete(
        self, account_id: str, conversation_id: str, dialect_name: str | None, attempts: int
    ) -> None:
        if conversation_id in self._in_delete:
            return
        self._in_delete.add(conversation_id)
        try:
            await self._delete_once(account_id, conversation_id, dialect_name, attempts, None)
        finally:
            self._in_delete.discard(conversation_id)

    async def _delete_once(
        self,
        account_id: str,
        conversation_id: str,
        dialect_name: str | None,
        attempts: int,
        account: Account | None,
    ) -> None:
        dialect = CONNECT if dialect_name == "connect" else LEGACY
        if account is None:
            account = await self.store.get_account(account_id)
        try:
            if account is None:
                raise RemoteProtocolError("account no longer known", status=404)
            token = await self.pool.access_token(account)
            await delete_conversation(
                self.kimi, dialect, conversation_id, token, notes=self.store
            )
        except Exception as exc:
            self.delete_failures += 1
            backoff = min(3600.0, 5.0 * 2**attempts)
            await self.store.reschedule(
                conversation_id, now=self.clock(), backoff=backoff, error=type(exc).__name__
            )
            log.warning(
                "deleting a Kimi conversation failed (attempt %d, retry in %.0f s): %s",
                attempts + 1,
                backoff,
                type(exc).__name__,
            )
            return
        await self.store.mark_deleted(conversation_id)
        self.deleted += 1

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        passes = 0
        while True:
            try:
                await self._pass()
                if passes % 600 == 0:
                    # Exchanges outlive nothing: their conversation is gone after the TTL.
                    keep = max(self.ttl, self.precreate_max_age) + 3600.0
                    await self.store.prune_exchanges(older_than=self.clock() - keep)
                    await self.store.prune_unproven_accounts(now=self.clock())
            except Exception as exc:
                log.warning("cleanup pass failed: %s", type(exc).__name__)
            passes += 1
            if self._closing:
                return
            await asyncio.sleep(self.tick)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Delete every conversation we still hold (spares included), within `timeout`.

        A cleanup pass that is running is left to finish, not cancelled: cut short between a
        DELETE that Kimi carried out and its `mark_deleted`, it would leave the conversation
        claimed by us, and the final pass below would delete it a second time (a 404)."""
        self._closing = True
        running = self._pass_task
        if self._loop_task is not None and self._loop_task is not running:
            self._loop_task.cancel()
        for task in list(self._tasks):
            if task is not running:
                task.cancel()
        self._spare.clear()
        try:
            async with asyncio.timeout(timeout):
                # Running deletions finish (each between its DELETE and `mark_deleted` would
                # otherwise be taken again by the final pass: a second DELETE, a 404).
                unfinished = {t for t in (running, *self._deleting) if t and not t.done()}
                if unfinished:
                    await asyncio.wait(unfinished)
                await self.delete_due(everything=True)
        except TimeoutError:
            log.warning("shutdown: some Kimi conversations are left for the next start to delete")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # A fresh context: background work must not count as the current request's calls.
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
