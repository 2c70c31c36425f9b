"""The values the request side produces: what to ask Kimi, and how.

These are plain frozen values, so the addon can log, compare and test them, and a plan can be
computed without a network. `plan_chat` (in `_request.py`) builds a `ChatPlan`; the dialect modules
build `KimiCall`s from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ChatPlan",
    "FileSource",
    "InlineFile",
    "KimiCall",
    "Message",
    "ModelFlags",
    "OutputFormat",
    "ToolSpec",
    "UrlFile",
]

FileKind = Literal["image", "file"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelFlags:
    """What a model name (plus request fields) asks of Kimi, for both dialects.

    Legacy dialect: `kimiplus_id`, `use_search`, `use_research`, `use_math`, `model` (the optional
    `model` field of newer web clients, e.g. "k1.5"). Connect dialect: `scenario`, `thinking`,
    `use_search` (the search tool), `kimiplus_id`/`agent_mode` for agents. `silent` is ours:
    search results are not written into the answer text (they still go into `annotations`).
    """

    kimiplus_id: str = "kimi"
    use_search: bool = False
    use_research: bool = False
    use_math: bool = False
    silent: bool = False
    thinking: bool = False
    model: str | None = None
    scenario: str = "SCENARIO_K2D5"
    agent_mode: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UrlFile:
    """A file or image the client named by http(s) URL; the addon fetches it (SSRF-safe)."""

    url: str
    kind_hint: FileKind
    #: where it came from in the request, e.g. "messages[2].content[1].image_url.url"
    param: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InlineFile:
    """A file or image the client sent inline as a `data:` URL, already decoded."""

    data: bytes
    mime_type: str
    #: the client's filename if it gave one, else a name derived from the content hash + mime type
    name: str
    kind_hint: FileKind
    param: str


FileSource = UrlFile | InlineFile


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One OpenAI message reduced to what Kimi can receive: its role and its text, with the
    files it referenced (in order). Used for flattening and for continuation keys."""

    role: str
    text: str
    files: tuple[FileSource, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """One function the client offers the model (`tools[i].function`, or a legacy
    `functions[i]`). `parameters` is the JSON Schema of its arguments (an empty schema when
    the client gave none); treat it as read-only."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputFormat:
    """`response_format` when it asks for JSON: `json_object` (any object) or `json_schema`
    (`schema` is the client's schema, `name` its name, `strict` as sent)."""

    type: Literal["json_object", "json_schema"]
    name: str = ""
    schema: Mapping[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatPlan:
    """Everything decided about one chat completion before any I/O."""

    #: the model name the client sent; echoed back in every response
    model: str
    flags: ModelFlags
    #: the text to post to Kimi: the flattened history, or only the newest user turn when the
    #: client continues a conversation by `conversation_id`
    prompt: str
    #: files to upload, from every user message of the history, in order
    files: tuple[FileSource, ...]
    messages: tuple[Message, ...]
    stream: bool = False
    include_usage: bool = False
    conversation_id: str | None = None
    #: the functions offered (`tools`, or legacy `functions`); empty: a plain chat
    tools: tuple[ToolSpec, ...] = ()
    #: "auto" (the default), "none", "required", or the name of the one function to call
    tool_choice: str = "auto"
    #: False: at most one call per answer
    parallel_tool_calls: bool = True
    #: JSON output asked for (`response_format` json_object / json_schema); None: text
    response_format: OutputFormat | None = None
    #: the answer ends before the first of these (`stop`), never sent in part
    stop: tuple[str, ...] = ()
    #: `max_completion_tokens` (or `max_tokens`): the answer is cut at this many tokens, by the
    #: estimate `usage` reports
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KimiCall:
    """One HTTP call to Kimi, relative to the configured base URL.

    Exactly one of `json` (sent as application/json) and `content` (raw bytes, e.g. a Connect
    envelope) is set for calls with a body. Header names are lower-case. The addon adds the
    session headers (authorization, device ids, ...) and performs the call.
    """

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    json: Any = None
    content: bytes | None = None
    #: True when the answer is a stream the translator will read
    stream: bool = False
