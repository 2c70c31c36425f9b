"""LegacyDecoder: kimi.moonshot.cn's completion stream → dialect-neutral `UpstreamEvent`s.

Theory of operation
-------------------
Bytes go through `SSEDecoder` (WHATWG rules, split-safe); each event's data is one JSON object
with an `event` field, parsed into a frozen `KimiEvent`, then read by its `event`:

- `cmpl` {text}                       → TextDelta (the next piece of the answer)
- `k1` {text}                         → ReasoningDelta (K1 thinking, before the answer)
- `k1` {type: search_results, search_results: [...]} → SearchResult per result
- `k1` {type: search_targets} or no text → Noise("k1")
- `search_plus` {msg: {type: get_res, title, url, site_name, snippet}} → SearchResult
- `search_plus` with another msg.type → Noise("search_plus")
- `ref_docs` {ref_cards: [{url, title, abstract, source_label}]} → SearchResult per card
- `req` {id}                          → MessageId (the segment id a continuation needs)
- `length`                            → LengthStop
- `error` {error: {error_type, message}} → ContentFiltered when it is moderation
  (`is_moderation`), else UpstreamFailure(error_for_type(...))
- `all_done`                          → Finished
- `resp`, `done`, `ping`, `rename`, `loading`, `debug`, `chat_prompt` → Noise(event)
- any other `event`                   → Unknown(event, payload = the raw data)

A search result whose url was already reported in this stream, or whose url is empty, is dropped
(Kimi repeats results across `search_plus`, `k1` and `ref_docs`).

Data that is not a JSON object with a string `event`, or a known event whose fields have the
wrong type (e.g. `cmpl` without a string `text`), is a `RemoteProtocolError`: silently dropping
an answer is worse than failing loudly. Two data values are tolerated as Noise because they
carry nothing: an empty data field (Noise("empty")) and `[DONE]` (Noise("[DONE]"), which Kimi
does not send but an OpenAI-style proxy in between might).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from json.scanner import make_scanner
from typing import Any, Final

from translator._errors import RemoteProtocolError
from translator._sse import DEFAULT_MAX_BYTES, SSEDecoder
from translator._upstream import (
    ContentFiltered,
    Finished,
    LengthStop,
    MessageId,
    Noise,
    ReasoningDelta,
    SearchResult,
    TextDelta,
    Unknown,
    UpstreamEvent,
    UpstreamFailure,
)

from ._errors import error_for_type, is_moderation

__all__ = ["KimiEvent", "LegacyDecoder", "parse_kimi_event"]

#: json.loads without its wrapper: (object, end index), exactly what json.loads would parse when
#: the object spans the whole text (json.loads only adds whitespace skipping and error messages)
_scan: Final = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed is off
_NOISE: Final = frozenset({"resp", "done", "ping", "rename", "loading", "debug", "chat_prompt"})


@dataclass(frozen=True, slots=True, kw_only=True)
class KimiEvent:
    """One legacy stream event: its `event` name, the parsed object, and the raw data text."""

    event: str
    fields: Mapping[str, Any]
    raw: str


def parse_kimi_event(data: str) -> KimiEvent:
    """Parse one SSE data payload as a Kimi event.

    Raises:
        RemoteProtocolError: the data is not a JSON object with a string `event`.
    """
    try:
        obj = json.loads(data)
    except ValueError:
        raise _bad(f"Kimi sent event data that is not JSON: {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise _bad(f"Kimi sent event data that is not a JSON object: {data[:80]!r}")
    event = obj.get("event")
    if not isinstance(event, str):
        raise _bad(f"Kimi sent an event without an `event` name: {data[:80]!r}")
    return KimiEvent(event=event, fields=obj, raw=data)


class LegacyDecoder:
    """`StreamDecoder` for the legacy SSE stream. `feed` any slice of the body, `close` once.

    Raises:
        RemoteProtocolError: bytes that break SSE or Kimi's event format (see module doc).
    """

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._sse = SSEDecoder(max_bytes=max_bytes)
        self._urls: set[str] = set()
        self._failed: RemoteProtocolError | None = None

    def feed(self, data: bytes) -> list[UpstreamEvent]:
        if self._failed is not None:
            raise self._failed
        out: list[UpstreamEvent] = []
        try:
            for text in self._sse.feed_data(data):
                # The hot path: an answer piece, `{"event":"cmpl","text":...}`, goes straight to
                # a TextDelta. Anything else (or anything odd) takes the full reading below,
                # which gives the same events and the same errors.
                try:
                    obj, end = _scan(text, 0)
                except (StopIteration, ValueError):
                    obj, end = None, -1
                if (
                    end == len(text)
                    and type(obj) is dict
                    and obj.get("event") == "cmpl"
                    and type(piece := obj.get("text")) is str
                ):
                    out.append(TextDelta(text=piece))
                else:
                    out.extend(self._read(text))
        except RemoteProtocolError as err:
            # Report in order: events decoded before the bad data go out first (see _sse.py).
            self._failed = err
            if not out:
                raise
        return out

    def close(self) -> list[UpstreamEvent]:
        if self._failed is not None:
            raise self._failed
        self._sse.close()  # an unterminated last event is discarded; nothing else can come
        return []

    def _read(self, data: str) -> Iterator[UpstreamEvent]:
        if not data.strip():
            yield Noise(kind="empty")
            return
        if data == "[DONE]":
            yield Noise(kind="[DONE]")
            return
        ev = parse_kimi_event(data)
        f = ev.fields
        match ev.event:
            case "cmpl":
                yield TextDelta(text=_need_str(f, "text", ev))
            case "k1":
                yield from self._k1(ev)
            case "search_plus":
                msg = f.get("msg")
                if not isinstance(msg, Mapping):
                    raise _bad(f"Kimi sent search_plus without a msg object: {ev.raw[:80]!r}")
                if msg.get("type") == "get_res":
                    yield from self._results([msg], ev)
                else:
                    yield Noise(kind="search_plus")
            case "ref_docs":
                yield from self._results(_need_list(f, "ref_cards", ev), ev)
            case "req":
                yield MessageId(message_id=_need_str(f, "id", ev))
            case "length":
                yield LengthStop()
            case "error":
                yield _error(ev)
            case "all_done":
                yield Finished()
            case name if name in _NOISE:
                yield Noise(kind=name)
            case name:
                yield Unknown(kind=name, payload=ev.raw)

    def _k1(self, ev: KimiEvent) -> Iterator[UpstreamEvent]:
        f = ev.fields
        if f.get("type") == "search_results":
            yield from self._results(_need_list(f, "search_results", ev), ev)
            return
        text = f.get("text")
        if text is not None and not isinstance(text, str):
            raise _bad(f"Kimi sent k1 with a non-string text: {ev.raw[:80]!r}")
        if text:
            yield ReasoningDelta(text=text)
        else:
            yield Noise(kind="k1")

    def _results(self, items: list[Any], ev: KimiEvent) -> Iterator[UpstreamEvent]:
        for item in items:
            if not isinstance(item, Mapping):
                raise _bad(f"Kimi sent a search result that is not an object: {ev.raw[:80]!r}")
            url = _need_str(item, "url", ev)
            if not url or url in self._urls:
                continue  # nothing to cite, or already reported
            self._urls.add(url)
            yield SearchResult(
                title=_opt_str(item, "title", ev) or "",
                url=url,
                site_name=_opt_str(item, "site_name", ev) or _opt_str(item, "source_label", ev),
                snippet=_opt_str(item, "snippet", ev) or _opt_str(item, "abstract", ev),
            )


def _error(ev: KimiEvent) -> UpstreamEvent:
    inner = ev.fields.get("error")
    source: Mapping[str, Any] = inner if isinstance(inner, Mapping) else ev.fields
    error_type = _opt_str(source, "error_type", ev) or _opt_str(ev.fields, "error_type", ev)
    message = _opt_str(source, "message", ev) or _opt_str(ev.fields, "message", ev) or ""
    if is_moderation(error_type):
        return ContentFiltered(message=message)
    return UpstreamFailure(error=error_for_type(error_type, message))


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code="upstream_protocol_error")


def _need_str(obj: Mapping[str, Any], key: str, ev: KimiEvent) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _bad(f"Kimi sent {ev.event} without a string {key}: {ev.raw[:80]!r}")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, ev: KimiEvent) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value or None
    raise _bad(f"Kimi sent {ev.event} with a non-string {key}: {ev.raw[:80]!r}")


def _need_list(obj: Mapping[str, Any], key: str, ev: KimiEvent) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise _bad(f"Kimi sent {ev.event} without a {key} list: {ev.raw[:80]!r}")
    return value
