"""The legacy dialect's calls (kimi.moonshot.cn REST + SSE), as frozen `KimiCall` values.

Paths are relative to the configured base URL. The addon adds the session headers (the access
token as `authorization`, `x-traffic-id`, device and session ids, ...) and performs the calls;
see docs/upstream-protocol.md for the wire shapes. Any conversation id that goes into a path is
checked against a safe charset first, so a client-given id cannot steer the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from translator._plan import KimiCall, ModelFlags
from translator.chat._validate import check_conversation_id

__all__ = [
    "REFRESH_PATH",
    "UploadedFile",
    "completion_call",
    "continuation_call",
    "create_conversation_call",
    "delete_conversation_call",
    "parse_process_call",
    "presign_call",
    "refresh_token_call",
    "register_file_call",
    "research_usage_call",
    "user_call",
]

REFRESH_PATH: Final = "/api/auth/token/refresh"

#: the streaming call must arrive as plain bytes: the decoder reads SSE, not gzip
_STREAM_HEADERS: Final = (("accept", "text/event-stream"), ("accept-encoding", "identity"))


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadedFile:
    """A file Kimi has accepted: its id (for `refs`), and the file detail `POST /api/file`
    answered (for `refs_file`, which describes the files as the web app does)."""

    id: str
    name: str
    size: int
    kind: Literal["image", "file"]
    detail: Mapping[str, Any] = field(default_factory=dict)


def refresh_token_call(path: str = REFRESH_PATH) -> KimiCall:
    """Exchange a refresh token for an access token (`{"access_token", "refresh_token"}`).

    The caller adds `authorization: Bearer <refresh token>` itself: this is the one call that
    carries the refresh token instead of the access token, and tokens never enter the translator.
    The path is a parameter because it is uncertain on www.kimi.com.
    """
    return KimiCall(method="GET", path=path)


def user_call() -> KimiCall:
    """The user object; its `id` is the `x-traffic-id` header of later calls."""
    return KimiCall(method="GET", path="/api/user")


def create_conversation_call(flags: ModelFlags) -> KimiCall:
    """Create a conversation (answer: `{"id": ...}`) with the agent the flags name."""
    return KimiCall(
        method="POST",
        path="/api/chat",
        json={
            "name": "未命名会话",  # "untitled conversation", what the web app sends
            "is_example": False,
            "enter_method": "new_chat",
            "kimiplus_id": flags.kimiplus_id,
        },
    )


def _ref_file(file: UploadedFile) -> dict[str, Any]:
    detail = dict(file.detail)
    return {
        "id": file.id,
        "name": file.name,
        "size": file.size,
        "file_info": detail,
        "detail": detail,
        "upload_progress": 100,
        "upload_status": "success",
        "parse_status": "success",
        "done": True,
    }


def _common(flags: ModelFlags) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kimiplus_id": flags.kimiplus_id,
        "use_search": flags.use_search,
        "use_research": flags.use_research,
        "use_math": flags.use_math,
        "extend": {"sidebar": True},
    }
    if flags.model is not None:
        body["model"] = flags.model
    return body


def _stream_path(conversation_id: str) -> str:
    return (
        f"/api/chat/{check_conversation_id(conversation_id, 'conversation_id')}/completion/stream"
    )


def completion_call(
    conversation_id: str,
    *,
    prompt: str,
    flags: ModelFlags,
    refs: Sequence[UploadedFile] = (),
) -> KimiCall:
    """Post `prompt` (one user message) into the conversation; the answer is an SSE stream.

    Raises:
        LocalProtocolError: `conversation_id` is not a safe id (param "conversation_id").
    """
    return KimiCall(
        method="POST",
        path=_stream_path(conversation_id),
        headers=_STREAM_HEADERS,
        json={
            "messages": [{"role": "user", "content": prompt}],
            "refs": [f.id for f in refs],
            "refs_file": [_ref_file(f) for f in refs],
            **_common(flags),
        },
        stream=True,
    )


def continuation_call(conversation_id: str, segment_id: str, flags: ModelFlags) -> KimiCall:
    """Ask for the rest of an answer that stopped at the length limit (`segment_id` is the id of
    the stream's `req` event). The message is a single space, as the web app sends.

    Raises:
        LocalProtocolError: `conversation_id` is not a safe id (param "conversation_id").
    """
    return KimiCall(
        method="POST",
        path=_stream_path(conversation_id),
        headers=_STREAM_HEADERS,
        json={
            "segment_id": segment_id,
            "action": "continue",
            "messages": [{"role": "user", "content": " "}],
            **_common(flags),
        },
        stream=True,
    )


def delete_conversation_call(conversation_id: str) -> KimiCall:
    """Delete a conversation we created (the reference's "session trace cleanup").

    Raises:
        LocalProtocolError: `conversation_id` is not a safe id (param "conversation_id").
    """
    safe = check_conversation_id(conversation_id, "conversation_id")
    return KimiCall(method="DELETE", path=f"/api/chat/{safe}")


def research_usage_call() -> KimiCall:
    """The deep-research quota (`{"remain", "total", "used"}`): no research when used ≥ total."""
    return KimiCall(method="GET", path="/api/chat/research/usage")


def presign_call(kind: Literal["image", "file"], name: str, size: int) -> KimiCall:
    """Ask for a pre-signed PUT URL (answer: `{"url", "object_name", "file_id"}`)."""
    return KimiCall(
        method="POST",
        path="/api/pre-sign-url",
        json={"action": kind, "name": name, "size": size},
    )


def register_file_call(
    kind: Literal["image", "file"],
    name: str,
    object_name: str,
    file_id: str,
    conversation_id: str,
) -> KimiCall:
    """Tell Kimi about an uploaded object (answer: the file detail with `id` and `status`).

    Files are registered into the conversation by object name (their `file_id` is sent empty, as
    the web app does); images by the pre-sign's file id.

    Raises:
        LocalProtocolError: `conversation_id` is not a safe id (param "conversation_id").
    """
    safe = check_conversation_id(conversation_id, "conversation_id")
    body: dict[str, Any]
    if kind == "image":
        body = {"type": "image", "file_id": file_id, "name": name}
    else:
        body = {
            "type": "file",
            "name": name,
            "object_name": object_name,
            "file_id": "",
            "chat_id": safe,
        }
    return KimiCall(method="POST", path="/api/file", json=body)


def parse_process_call(ids: Sequence[str]) -> KimiCall:
    """Wait until Kimi has parsed the files. The answer streams status events; the addon only
    reads it to its end (the translator does not decode it), hence `stream=False`."""
    return KimiCall(method="POST", path="/api/file/parse_process", json={"ids": list(ids)})
