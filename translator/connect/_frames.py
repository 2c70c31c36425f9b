"""Connect-RPC envelopes: the 5-byte framing of www.kimi.com's streaming chat call.

Every message of a Connect stream (both the request body and the response body) is one envelope:

    +-------+-------------------+----------------------+
    | flags | length (4 bytes,  | payload (length      |
    | 1 B   | big-endian, u32)  | bytes; here JSON)    |
    +-------+-------------------+----------------------+

Flag bits (Connect protocol specification, "Streaming-Response"):

- 0x01 compressed: the payload is compressed with the encoding named in the
  `connect-content-encoding` header. We never announce `connect-accept-encoding`, so a compliant
  server never sets this bit; seeing it means we could not read the payload, which is an error
  (`RemoteProtocolError`) rather than something to skip silently.
- 0x02 end of stream: the last envelope; its payload is `{}` or `{"error": ..., "metadata": ...}`.

Any other bit is reserved by the specification and refused, so a desynchronised stream (a
length that was really text) is caught as early as possible.

`EnvelopeDecoder` is incremental: `feed` accepts any slice of the body (one byte, half a header,
three envelopes at once) and returns the envelopes completed so far. A fault is raised by the
first call that has no earlier good envelope left to return, so what a caller receives before
the error is the same however the body was cut. A declared length above
`max_message_bytes` is refused as soon as the header is complete, before any of it is buffered,
so a hostile or corrupt length cannot make us hold gigabytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from translator._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FLAG_COMPRESSED",
    "FLAG_END_STREAM",
    "Envelope",
    "EnvelopeDecoder",
    "encode_envelope",
]

FLAG_COMPRESSED: Final = 0x01
FLAG_END_STREAM: Final = 0x02
_KNOWN_FLAGS: Final = FLAG_COMPRESSED | FLAG_END_STREAM

#: Kimi's messages are small (a token, a search card); 16 MiB leaves room for a whole answer
#: re-sent by a `set` while bounding memory per stream.
DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

_HEADER: Final = struct.Struct(">BI")
#: the largest length the 4-byte field can express
_MAX_WIRE_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One decoded envelope: its flag byte and its (still encoded) payload."""

    flags: int
    payload: bytes

    @property
    def end_stream(self) -> bool:
        """True for the stream's final envelope (flag 0x02), whose payload is the trailer."""
        return bool(self.flags & FLAG_END_STREAM)


def encode_envelope(payload: Mapping[str, Any] | bytes, *, end_stream: bool = False) -> bytes:
    """Frame `payload` as one Connect envelope.

    A mapping is encoded as compact UTF-8 JSON (non-ASCII kept as is, as browsers send it);
    bytes are framed unchanged.

    Raises:
        LocalProtocolError: the payload is longer than the 4-byte length field can express.
    """
    if isinstance(payload, bytes):
        body = payload
    else:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(body) > _MAX_WIRE_LENGTH:
        raise LocalProtocolError(
            f"a Connect message is limited to {_MAX_WIRE_LENGTH} bytes, this one has {len(body)}",
            param="messages",
        )
    flags = FLAG_END_STREAM if end_stream else 0
    return _HEADER.pack(flags, len(body)) + body


class EnvelopeDecoder:
    """Split-safe incremental decoder of a Connect envelope stream.

    `feed(data)` returns the envelopes completed by `data`; `close()` checks that the body ended
    on an envelope boundary. After an error every further call raises the same error again.

    Raises (from `feed` / `close`):
        RemoteProtocolError: a reserved or compression flag, a declared length above
            `max_message_bytes`, or a body that ends inside an envelope.
    """

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of an envelope not yet complete (0 on an envelope boundary)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Envelope]:
        """Add `data` to the buffer and return every envelope now complete."""
        self._check()
        # On an envelope boundary (the usual case: a read holds whole envelopes) read `data` in
        # place and keep only its incomplete tail; copying it into the buffer first would cost
        # a copy of every byte of the body.
        buffer: bytes | bytearray = data
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        envelopes: list[Envelope] = []
        start = 0
        size = len(buffer)
        while size - start >= _HEADER.size:
            flags, length = _HEADER.unpack_from(buffer, start)
            if flags or length > self.max_message_bytes:
                try:
                    self._check_header(flags, length)
                except RemoteProtocolError:
                    if not envelopes:
                        raise
                    # Deliver the envelopes that came before the fault; the next call raises
                    # it. So the envelopes a caller sees do not depend on how the body was cut.
                    return envelopes
            end = start + _HEADER.size + length
            if end > size:
                break
            envelopes.append(
                Envelope(flags=flags, payload=bytes(buffer[start + _HEADER.size : end]))
            )
            start = end
        if buffer is self._buffer:
            # one deletion per feed keeps a stream of tiny reads linear, not quadratic
            del self._buffer[:start]
        elif start < size:
            self._buffer += memoryview(data)[start:]
        return envelopes

    def close(self) -> None:
        """Declare the end of the body.

        Raises:
            RemoteProtocolError: bytes of an incomplete envelope are left over.
        """
        self._check()
        if self._buffer:
            self._fail(
                f"the Connect stream ended inside an envelope "
                f"({len(self._buffer)} bytes left over)",
                code="truncated_frame",
            )

    def _check_header(self, flags: int, length: int) -> None:
        if flags & ~_KNOWN_FLAGS:
            self._fail(f"Connect envelope with reserved flags 0x{flags:02x}", code="bad_frame")
        if flags & FLAG_COMPRESSED:
            # We never send `connect-accept-encoding`, so the server had no right to compress.
            self._fail(
                "compressed Connect envelope, but no compression was negotiated", code="bad_frame"
            )
        if length > self.max_message_bytes:
            self._fail(
                f"Connect envelope of {length} bytes exceeds the limit of "
                f"{self.max_message_bytes} bytes",
                code="frame_too_large",
            )

    def _fail(self, message: str, *, code: str) -> None:
        self._error = RemoteProtocolError(message, code=code)
        self._buffer.clear()
        raise self._error

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
