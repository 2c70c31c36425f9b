"""Writing one OpenAI reply to the client: a stream of SSE chunks or one JSON body.

The chat logic produces chunk dicts and errors; a `Reply` decides the wire form. The important
rule lives here: no HTTP status is committed before the first chunk, so an error that happens
before it is still a proper JSON error (and the chat logic can still fail over to another
account), while an error after it becomes a final `{"error": ...}` event and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Protocol

from aiohttp import web

from translator import TranslatorError
from translator._sse import SSE_DONE, encode_sse, encode_sse_comment
from translator.chat._fold import fold_completion

__all__ = [
    "JsonReply",
    "Reply",
    "SseReply",
    "SseResponse",
    "error_response",
    "json_response",
]

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    # nginx and other buffering proxies in between must pass every event at once.
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class SseResponse(web.StreamResponse):
    """A streamed reply whose status line and headers go out with its first bytes, in one
    write, and whose last bytes go out with the end of the chunked body (`write_eof(data)`).

    aiohttp sends a `StreamResponse`'s headers at `prepare()` on their own. Each write to
    mitmproxy is a loopback send, a wake-up and a pass through its HTTP/1 layers, paid per
    reply: headers and first chunk in one write, last chunk and terminator in another, save
    two of the ten or so writes a short answer takes (docs/benchmarks.md, fifth round). The
    client gets the same bytes; a reply prepares only when its first bytes are ready anyway.
    """

    _send_headers_immediately = False  # aiohttp's opt-in: headers wait for the first write

    @classmethod
    async def start(cls, request: web.Request) -> SseResponse:
        """A 200 event stream for `request`, prepared (its headers wait for its first bytes)."""
        response = cls(status=200, headers=SSE_HEADERS)
        await response.prepare(request)
        return response

    async def send(self, data: bytes, *, last: bool = False) -> None:
        """Write `data`; with `last`, end the stream in the same write."""
        if last:
            await self.write_eof(data)
        elif data:
            await self.write(data)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(obj, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
    )


def error_response(err: TranslatorError) -> web.Response:
    response = json_response(err.to_openai(), err.status)
    if err.retry_after is not None and err.status in (429, 503):
        response.headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    return response


class Reply(Protocol):
    @property
    def started(self) -> bool: ...

    async def send(self, chunks: list[dict[str, Any]]) -> None: ...

    async def keepalive(self) -> None: ...

    async def finish(self, chunks: list[dict[str, Any]]) -> web.StreamResponse: ...

    async def fail(self, err: TranslatorError) -> web.StreamResponse: ...


class SseReply:
    """`stream: true`: chunks go out as they come; headers at the first chunk."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response: SseResponse | None = None
        self._lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        return self._response is not None

    async def _start(self) -> SseResponse:
        if self._response is None:
            self._response = await SseResponse.start(self._request)
        return self._response

    async def send(self, chunks: list[dict[str, Any]]) -> None:
        if not chunks:
            return
        async with self._lock:
            response = await self._start()
            await response.write(b"".join(encode_sse(c) for c in chunks))

    async def send_sse(self, data: bytes) -> None:
        """Write SSE bytes the translator already encoded (`ResponseTranslator.feed_sse`), the
        hot path of a streamed answer."""
        if not data:
            return
        async with self._lock:
            response = await self._start()
            await response.write(data)

    async def keepalive(self) -> None:
        # A comment line is ignored by every SSE client but resets the idle timers of proxies
        # in between while Kimi thinks or searches.
        async with self._lock:
            response = await self._start()
            await response.write(encode_sse_comment("keep-alive"))

    async def finish(self, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        async with self._lock:
            response = await self._start()
            await response.send(b"".join(encode_sse(c) for c in chunks) + SSE_DONE, last=True)
            return response

    async def fail(self, err: TranslatorError) -> web.StreamResponse:
        async with self._lock:
            if self._response is None:
                return error_response(err)
            # Already streaming: say so in-band, then end the stream properly.
            await self._response.send(encode_sse(err.to_openai()) + SSE_DONE, last=True)
            return self._response


class JsonReply:
    """`stream: false`: collect every chunk, answer one `chat.completion` at the end."""

    def __init__(self, *, prompt_text: str = "") -> None:
        self._chunks: list[dict[str, Any]] = []
        #: the text posted to Kimi, for the usage estimate (set once the plan is known)
        self.prompt_text = prompt_text

    @property
    def started(self) -> bool:
        # Nothing reaches the client before the end, so failover stays possible until then.
        return False

    async def send(self, chunks: list[dict[str, Any]]) -> None:
        self._chunks.extend(chunks)

    async def keepalive(self) -> None:
        return None

    async def finish(self, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        self._chunks.extend(chunks)
        return json_response(fold_completion(self._chunks, prompt_text=self.prompt_text))

    async def fail(self, err: TranslatorError) -> web.StreamResponse:
        return error_response(err)

    def reset(self) -> None:
        """Forget a failed attempt's chunks before failing over to another account."""
        self._chunks.clear()
