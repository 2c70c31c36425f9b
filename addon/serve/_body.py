"""Request bodies read within bounds: size before and after decompression, JSON depth, no NaN.

The relay reads bodies itself instead of letting aiohttp inflate them (`auto_decompress=False`
on the runner): aiohttp inflated a 600 KB gzip body to 600 MB (1 GB of RSS) before its size check
refused it. Here a `Content-Encoding: gzip` or `deflate` body is inflated chunk by chunk with
`max_length`, so no more than `limit` + one chunk is ever held, compressed or not.

JSON is parsed strictly: `NaN`, `Infinity` and `-Infinity` are not JSON (Python's json module
accepts them; OpenAI answers 400), and nesting deep enough to exhaust the parser's recursion is a
400 too, not a 500.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from addon.mitm._credentials import HELD_BODY
from translator import LocalProtocolError

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "BodyError", "parse_json", "read_body", "read_json"]

#: 64 MiB: room for inline (base64) files of about 48 MB, far below what would hurt the process
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024

_CHUNK = 64 * 1024
_ENCODINGS = frozenset({"gzip", "x-gzip", "deflate"})


class BodyError(LocalProtocolError):
    """A request body refused before it is parsed (too large, unknown or broken encoding)."""


def _too_large(limit: int) -> BodyError:
    return BodyError(
        f"the request body is larger than {limit} bytes (after decompression); "
        "the proxy's limit is the option max_request_bytes",
        status=413,
        code="request_too_large",
    )


def _decompressor(encoding: str) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    # HTTP's "deflate" is zlib-wrapped; some clients send raw deflate. 32 + MAX_WBITS detects
    # zlib and gzip headers; raw deflate is tried when that fails on the first bytes.
    return zlib.decompressobj(32 + zlib.MAX_WBITS)


async def _held_chunks(raw: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), _CHUNK):
        yield raw[start : start + _CHUNK]


async def read_body(request: web.BaseRequest, *, limit: int) -> bytes:
    """The request body, decoded from gzip/deflate, refused with 413 once it passes `limit`.
    A body the addon held back from the flow (addon/mitm/_credentials.py) is read from the vault."""
    held = request.get(HELD_BODY)
    if held is not None:
        chunks = _held_chunks(held.raw)
        encoding = held.content_encoding
    else:
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _too_large(limit)
        chunks = request.content.iter_chunked(_CHUNK)
        encoding = request.headers.get("content-encoding", "identity")
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return await _read_plain(chunks, limit)
    if encoding not in _ENCODINGS:
        raise BodyError(
            f"unsupported Content-Encoding {encoding[:40]!r}: send identity, gzip or deflate",
            status=415,
            code="unsupported_content_encoding",
        )
    return await _read_inflated(chunks, limit, encoding)


async def _read_plain(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


async def _read_inflated(chunks: AsyncIterator[bytes], limit: int, encoding: str) -> bytes:
    inflater = _decompressor(encoding)
    raw_deflate = False
    body = bytearray()
    received = 0
    started = False
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            if not started and encoding == "deflate" and not _looks_wrapped(chunk):
                inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                raw_deflate = True
            started = True
            data = chunk
            while data:
                # At most one byte past the limit is ever inflated from this chunk.
                body += inflater.decompress(data, limit + 1 - len(body))
                if len(body) > limit:
                    raise _too_large(limit)
                data = inflater.unconsumed_tail
        body += inflater.flush()
    except zlib.error:
        raise BodyError(
            f"the request body is not valid {encoding} data",
            code="invalid_content_encoding",
        ) from None
    if len(body) > limit:
        raise _too_large(limit)
    if started and not raw_deflate and not inflater.eof:
        raise BodyError(
            f"the request body's {encoding} data is truncated", code="invalid_content_encoding"
        )
    return bytes(body)


def _looks_wrapped(first: bytes) -> bool:
    """A zlib (RFC 1950) or gzip header, as opposed to raw deflate data."""
    if first[:2] == b"\x1f\x8b":
        return True
    return len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: a 400 `invalid_json` for bad syntax, NaN/Infinity, or nesting too deep."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise LocalProtocolError(
            "the request body is nested too deeply", code="invalid_json"
        ) from None
    except ValueError as exc:
        message = str(exc) if "not valid JSON" in str(exc) else ""
        raise LocalProtocolError(
            "the request body is not valid JSON" + (f": {message}" if message else ""),
            code="invalid_json",
        ) from None


async def read_json(request: web.BaseRequest, *, limit: int) -> Any:
    """`read_body` then `parse_json`."""
    return parse_json(await read_body(request, limit=limit))
