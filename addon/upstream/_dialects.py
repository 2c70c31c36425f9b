"""The two upstream dialects behind one small interface, so the chat logic is written once.

legacy  — kimi.moonshot.cn REST + SSE: a conversation is created before the completion call.
connect — www.kimi.com Connect-RPC: the chat is created by the stream call itself and its id
          comes back in the stream; a continuation names the previous assistant message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

from translator import ChatPlan, KimiCall, ModelFlags, RemoteProtocolError, StreamDecoder
from translator.connect._calls import chat_call, delete_chat_call
from translator.connect._stream import ConnectDecoder, connect_error
from translator.legacy._calls import (
    UploadedFile,
    completion_call,
    continuation_call,
    create_conversation_call,
    delete_conversation_call,
)
from translator.legacy._errors import kimi_error
from translator.legacy._stream import LegacyDecoder

__all__ = ["CONNECT", "LEGACY", "Dialect", "DialectName", "choose_dialect"]

DialectName = Literal["legacy", "connect"]


class Dialect(Protocol):
    @property
    def name(self) -> DialectName: ...

    @property
    def creates_conversation_first(self) -> bool:
        """True when a conversation must exist before the completion call."""
        ...

    def create_call(self, flags: ModelFlags) -> KimiCall | None: ...

    def completion_call(
        self,
        plan: ChatPlan,
        *,
        conversation_id: str,
        parent_id: str,
        files: Sequence[UploadedFile],
    ) -> KimiCall: ...

    def continuation_call(
        self, conversation_id: str, segment_id: str, flags: ModelFlags
    ) -> KimiCall | None: ...

    def delete_call(self, conversation_id: str) -> KimiCall: ...

    def decoder(self) -> StreamDecoder: ...

    def http_error(self, status: int, body: bytes) -> RemoteProtocolError: ...


@dataclass(frozen=True, slots=True)
class _Legacy:
    name: DialectName = "legacy"
    creates_conversation_first: bool = True

    def create_call(self, flags: ModelFlags) -> KimiCall | None:
        return create_conversation_call(flags)

    def completion_call(
        self,
        plan: ChatPlan,
        *,
        conversation_id: str,
        parent_id: str,
        files: Sequence[UploadedFile],
    ) -> KimiCall:
        return completion_call(conversation_id, prompt=plan.prompt, flags=plan.flags, refs=files)

    def continuation_call(
        self, conversation_id: str, segment_id: str, flags: ModelFlags
    ) -> KimiCall | None:
        return continuation_call(conversation_id, segment_id, flags)

    def delete_call(self, conversation_id: str) -> KimiCall:
        return delete_conversation_call(conversation_id)

    def decoder(self) -> StreamDecoder:
        return LegacyDecoder()

    def http_error(self, status: int, body: bytes) -> RemoteProtocolError:
        return kimi_error(status, body)


@dataclass(frozen=True, slots=True)
class _Connect:
    name: DialectName = "connect"
    creates_conversation_first: bool = False

    def create_call(self, flags: ModelFlags) -> KimiCall | None:
        return None

    def completion_call(
        self,
        plan: ChatPlan,
        *,
        conversation_id: str,
        parent_id: str,
        files: Sequence[UploadedFile],
    ) -> KimiCall:
        return chat_call(
            plan, chat_id=conversation_id, parent_id=parent_id, file_ids=[f.id for f in files]
        )

    def continuation_call(
        self, conversation_id: str, segment_id: str, flags: ModelFlags
    ) -> KimiCall | None:
        # The Connect chat has no `length` continuation call that we know of.
        return None

    def delete_call(self, conversation_id: str) -> KimiCall:
        return delete_chat_call(conversation_id)

    def decoder(self) -> StreamDecoder:
        return ConnectDecoder()

    def http_error(self, status: int, body: bytes) -> RemoteProtocolError:
        return connect_error(status, body)


LEGACY: Dialect = _Legacy()
CONNECT: Dialect = _Connect()


def choose_dialect(setting: str, base_url: str, account_dialect: str | None = None) -> Dialect:
    """`--dialect auto` picks by the account's own setting, else by the base URL's host:
    www.kimi.com (and kimi.com) speak Connect since 2025, kimi.moonshot.cn the legacy protocol."""
    choice = account_dialect or setting
    if choice == "auto":
        host = urlsplit(base_url).hostname or ""
        choice = "connect" if host == "kimi.com" or host.endswith(".kimi.com") else "legacy"
    return CONNECT if choice == "connect" else LEGACY
