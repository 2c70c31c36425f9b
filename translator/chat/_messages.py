"""OpenAI messages → `Message` values, and the one text Kimi receives.

Kimi's web chat takes one user message per completion, so an OpenAI history is flattened into one
text, as the reference client did:

- a lone message passes as its text;
- several become one `role:content` line each, joined with "\\n", and just before the last one a
  system line asks the model to attend to the newest message (`LATEST_HINT`), or to the newest
  files and message when the last message carries files (`LATEST_FILES_HINT`). Without it, Kimi
  tends to answer the first question of a long history.

Tool calls: an assistant turn's `tool_calls` (or legacy `function_call`) are written after its text
in the call protocol, and a `tool` (or legacy `function`) message as a `<tool_result>` block
(`_tool_prompt.py`), so the model reads its earlier calls and their results in the form it is asked
to use. Histories without them are flattened exactly as before.

URLs in user text are wrapped in the web app's `<url …>` tag, which makes Kimi read the page;
assistant, tool and system text is history, not a request to read a page, so it is not wrapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from translator._dataurl import effective_mime, inline_name, kind_for_mime, parse_data_url
from translator._errors import LocalProtocolError
from translator._plan import FileKind, FileSource, InlineFile, Message, UrlFile
from translator.tools._prompt import assistant_text, render_result

__all__ = [
    "LATEST_FILES_HINT",
    "LATEST_HINT",
    "flatten_messages",
    "normalise_messages",
    "wrap_urls",
]

LATEST_HINT: Final = "system:请关注用户最新的消息"
LATEST_FILES_HINT: Final = "system:请关注用户最新发送的文件和消息"

# Either a URL already inside a <url …>…</url> tag (kept as is, so wrapping is idempotent) or a
# bare http(s) URL made of RFC 3986 characters (so "看https://a.cn的" stops before "的").
_URL_OR_TAG = re.compile(
    r"(?P<tag><url\b[^>]*>.*?</url>)|(?P<url>https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+)",
    re.IGNORECASE | re.DOTALL,
)
#: sentence punctuation right after a URL belongs to the sentence, not the URL
_TRAILING: Final = ".,;:!?'"


def _wrap_one(match: re.Match[str]) -> str:
    url = match["url"]
    if url is None:
        return match[0]
    end = len(url)
    while end > 0 and (
        url[end - 1] in _TRAILING
        # a closing parenthesis is the URL's own only when it balances one inside the URL
        or (url[end - 1] == ")" and url.count("(", 0, end) < url.count(")", 0, end))
    ):
        end -= 1
    url, rest = url[:end], url[end:]
    if url.endswith("://"):
        return match[0]
    return f'<url id="" type="url" status="" title="" wc="">{url}</url>{rest}'


def wrap_urls(text: str) -> str:
    """Wrap each bare http(s) URL in `text` as `<url id="" type="url" status="" title=""
    wc="">URL</url>`, the web app's link tag. URLs already wrapped are left alone."""
    return _URL_OR_TAG.sub(_wrap_one, text)


def flatten_messages(messages: Sequence[Message]) -> str:
    """The one text to post for `messages` (see the module docstring for the rules)."""
    if len(messages) == 1:
        return _line_text(messages[0])
    lines = [f"{m.role}:{_line_text(m)}" for m in messages]
    if lines:
        hint = LATEST_FILES_HINT if messages[-1].files else LATEST_HINT
        lines.insert(len(lines) - 1, hint)
    return "\n".join(lines)


def _line_text(message: Message) -> str:
    return wrap_urls(message.text) if message.role == "user" else message.text


# --- normalising --------------------------------------------------------------------------------


def normalise_messages(messages: Sequence[Any]) -> tuple[Message, ...]:
    """The validated OpenAI `messages` as `Message`s: role, the text of the content (text parts
    joined with "\\n"; refusal parts count as assistant text), and, for user messages, the files
    the parts name, decoded where inline.

    Raises:
        LocalProtocolError: a file URL that is neither http(s) nor a valid `data:` URL, or an
            empty inline file; `param` names the part.
    """
    names: dict[str, str] = {}  # tool call id -> function name, for the results that follow
    out: list[Message] = []
    for i, raw in enumerate(messages):
        message = _message(raw, f"messages[{i}]")
        role = message.role
        if role == "assistant" and (raw.get("tool_calls") or raw.get("function_call")):
            calls = [c["function"] for c in raw.get("tool_calls") or ()]
            names.update((c["id"], c["function"]["name"]) for c in raw.get("tool_calls") or ())
            if raw.get("function_call"):
                calls.append(raw["function_call"])
            pairs = [(c["name"], c["arguments"]) for c in calls]
            message = Message(role=role, text=assistant_text(message.text, pairs))
        elif role == "tool":
            call_id = raw["tool_call_id"]
            text = render_result(names.get(call_id), call_id, message.text)
            message = Message(role=role, text=text)
        elif role == "function":
            message = Message(role=role, text=render_result(raw["name"], None, message.text))
        out.append(message)
    return tuple(out)


def _message(message: Mapping[str, Any], path: str) -> Message:
    role: str = message["role"]
    content = message.get("content")
    if not isinstance(content, list):
        return Message(role=role, text=content or "")
    texts: list[str] = []
    files: list[FileSource] = []
    for j, part in enumerate(content):
        part_path = f"{path}.content[{j}]"
        kind = part["type"]
        if kind in ("text", "refusal"):
            texts.append(part[kind])
        elif kind == "image_url":
            image = part["image_url"]
            if isinstance(image, str):
                files.append(_from_url(image, "image", f"{part_path}.image_url"))
            else:
                files.append(_from_url(image["url"], "image", f"{part_path}.image_url.url"))
        elif "file_url" in part:
            files.append(_from_url(part["file_url"]["url"], "file", f"{part_path}.file_url.url"))
        else:
            files.append(_from_file_data(part["file"], f"{part_path}.file"))
    return Message(role=role, text="\n".join(texts), files=tuple(files))


def _from_url(url: str, hint: FileKind, param: str) -> FileSource:
    scheme = url.partition(":")[0].lower()
    if scheme in ("http", "https"):
        return UrlFile(url=url, kind_hint=hint, param=param)
    if scheme == "data":
        decoded = parse_data_url(url, param=param)
        return _inline(decoded.data, decoded.mime_type, None, param)
    raise LocalProtocolError(
        f"{param}: only http(s) and data: URLs can be read, got {scheme or url[:16]!r}",
        param=param,
        code="invalid_value",
    )


def _from_file_data(file: Mapping[str, Any], path: str) -> InlineFile:
    param = f"{path}.file_data"
    data: str = file["file_data"]
    if data[:5].lower() == "data:":
        decoded = parse_data_url(data, param=param)
        payload, declared = decoded.data, decoded.mime_type
    else:
        # OpenAI's documented form is bare base64; it declares no type, so the bytes decide.
        payload, declared = parse_data_url(f"data:;base64,{data}", param=param).data, None
    return _inline(payload, declared, file.get("filename"), param)


def _inline(data: bytes, declared: str | None, filename: str | None, param: str) -> InlineFile:
    if not data:
        raise LocalProtocolError(f"{param}: the file is empty", param=param, code="invalid_value")
    mime = effective_mime(data, declared)
    # Only the last path component: the name is shown by Kimi, never used as a path.
    name = re.split(r"[/\\]", filename)[-1] if filename else ""
    return InlineFile(
        data=data,
        mime_type=mime,
        name=name or inline_name(data, mime),
        kind_hint=kind_for_mime(mime),
        param=param,
    )
