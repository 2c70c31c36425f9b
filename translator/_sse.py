"""Server-sent events: the WHATWG decoder for Kimi's stream, and the ONE encoder of our replies.

Decoding follows the WHATWG HTML "event stream interpretation" rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- lines end with CRLF, LF or CR; a CR ending one `feed` and an LF starting the next are ONE line
  end (the CR ends the line at once, and a following LF is skipped);
- a line starting with `:` is a comment; `field:value` strips ONE leading space from the value;
  a line without a colon is a field with an empty value;
- `data` lines are joined with "\\n"; a blank line dispatches the event, unless no `data` line was
  seen (the spec's "data buffer is empty"); `id` and `retry` are kept as the spec says;
- one UTF-8 BOM at the very start is ignored; an unterminated event at the end is discarded.

Two deliberate departures, both because this is Kimi's data and not a browser feed:

- Invalid UTF-8 is a `RemoteProtocolError`, not U+FFFD: replacing characters would silently
  corrupt the answer (the seed then truncated text at the first U+FFFD). Lines are split on the
  bytes CR/LF *before* decoding, which is safe because UTF-8 never uses 0x0A/0x0D inside a
  multi-byte sequence; each complete line is then decoded strictly. This is exactly incremental
  decoding, with errors reported at line granularity, so the error never depends on where the
  network cut the body.
- A line or an event larger than `max_bytes` (8 MiB) is a `RemoteProtocolError`, so a hostile or
  broken upstream cannot make us buffer without bound.

Errors are reported in order: when a `feed` has already decoded events before it meets bad
bytes, it returns those events and raises the error on the next call (`feed` or `close`). So the
events a caller sees never depend on how the body was split.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from ._errors import RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SSE_DONE",
    "SSEDecoder",
    "ServerSentEvent",
    "encode_sse",
    "encode_sse_comment",
    "encode_sse_event",
]

#: Upper bound for one line and for one event's data (bytes), against memory exhaustion.
DEFAULT_MAX_BYTES: Final = 8 * 1024 * 1024

#: The terminator OpenAI streams end with. The addon writes it exactly once, after `close()`.
SSE_DONE: Final = b"data: [DONE]\n\n"

_BOM: Final = b"\xef\xbb\xbf"
_LINE_END: Final = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSentEvent:
    """One dispatched event. `event` defaults to "message"; `id` is the last event id seen so
    far (the spec keeps it across events); `retry` is the last valid `retry` field, if any."""

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Incremental `text/event-stream` decoder: `feed(bytes)` any slice, `close()` once.

    Raises:
        RemoteProtocolError: invalid UTF-8, or a line/event over `max_bytes`.
    """

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max = max_bytes
        self._buf = bytearray()
        self._scan_from = 0  # bytes of _buf already searched for a line end
        self._at_start = True  # the BOM may still come
        self._skip_lf = False  # the previous line ended with a CR at the end of a feed
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self._has_data = False
        self._last_id = ""
        self._retry: int | None = None
        self._failed: RemoteProtocolError | None = None
        self._data_only = False  # dispatch data strings instead of ServerSentEvents

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Decode the next slice of the body; return the events it completed."""
        return self._run(data, False)  # type: ignore[return-value]

    def feed_data(self, data: bytes) -> list[str]:
        """`feed`, but only each event's `data` (for a caller that reads nothing else): the
        same events, errors and state, without building a `ServerSentEvent` per event."""
        return self._run(data, True)  # type: ignore[return-value]

    def _run(self, data: bytes, data_only: bool) -> list[ServerSentEvent | str]:
        if self._failed is not None:
            raise self._failed
        self._data_only = data_only
        events: list[ServerSentEvent | str] = []
        try:
            self._feed(data, events)
        except RemoteProtocolError as err:
            self._failed = err
            if not events:
                raise
        return events

    def close(self) -> list[ServerSentEvent]:
        """The body ended. An unterminated line or event is discarded, as the spec says."""
        if self._failed is not None:
            raise self._failed
        self._buf.clear()
        self._data.clear()
        self._has_data = False
        return []

    def _feed(self, data: bytes, events: list[ServerSentEvent | str]) -> None:
        buf = self._buf
        buf += data
        if self._at_start:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return  # cannot tell yet whether this is a BOM
            self._at_start = False
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
        if self._skip_lf and buf:
            self._skip_lf = False
            if buf[0] == 0x0A:
                del buf[:1]
        if (
            b"\r" not in data  # the buffer before `data` never holds a line end
            and self._data_size + len(buf) <= self._max  # so no limit can be hit below
            and self._fast(buf, events)
        ):
            return
        pos = 0
        while (match := _LINE_END.search(buf, max(pos, self._scan_from))) is not None:
            self._scan_from = 0
            self._line(bytes(buf[pos : match.start()]), events)
            pos = match.end()
            if match.group() == b"\r" and pos == len(buf):
                self._skip_lf = True
        del buf[:pos]
        self._scan_from = len(buf)
        if len(buf) > self._max:
            raise RemoteProtocolError(
                f"Kimi sent an SSE line longer than {self._max} bytes",
                code="upstream_protocol_error",
            )

    def _fast(self, buf: bytearray, events: list[ServerSentEvent | str]) -> bool:
        """The common case, in one pass: LF line ends only, and nothing near a limit (the caller
        checked both). The complete lines are decoded at once (a line end never splits a UTF-8
        sequence, so this is the same strict decoding) and split on LF. False, with nothing
        changed, when those bytes are not valid UTF-8: the exact path then delivers the events
        before the bad line and reports it in order."""
        end = buf.rfind(b"\n")
        if end < 0:
            self._scan_from = len(buf)
            return True
        try:
            text = buf[:end].decode("utf-8")
        except UnicodeDecodeError:
            return False
        del buf[: end + 1]
        self._scan_from = len(buf)
        lines = text.split("\n")
        data = self._data
        for line in lines:
            if line[:5] == "data:":
                data.append(line[6:] if line[5:6] == " " else line[5:])
                self._has_data = True
            elif line:
                self._field(line, 0)
            else:
                self._dispatch(events)
        if self._has_data:
            # An event continues into the next feed: its size so far, in bytes, for the limit
            # (counted here, once, rather than per line).
            size = 0
            for line in reversed(lines):
                if not line:
                    break
                if line[:5] == "data:" or line == "data":
                    size += len(line.encode("utf-8")) if not line.isascii() else len(line)
            else:
                size += self._data_size  # no blank line: the event began in an earlier feed
            self._data_size = size
        return True

    def _line(self, raw: bytes, events: list[ServerSentEvent | str]) -> None:
        if len(raw) > self._max:
            raise RemoteProtocolError(
                f"Kimi sent an SSE line longer than {self._max} bytes",
                code="upstream_protocol_error",
            )
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"Kimi sent invalid UTF-8 in its event stream ({exc.reason})",
                code="upstream_protocol_error",
            ) from None
        if not line:
            self._dispatch(events)
            return
        self._field(line, len(raw))

    def _field(self, line: str, size: int) -> None:
        """One non-blank line; `size` is its length in bytes, for the event size limit."""
        if line.startswith(":"):
            return  # a comment (keep-alive)
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_size += size
            if self._data_size > self._max:
                raise RemoteProtocolError(
                    f"Kimi sent an SSE event larger than {self._max} bytes",
                    code="upstream_protocol_error",
                )
            self._data.append(value)
            self._has_data = True
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # Any other field is ignored, as the spec says.

    def _dispatch(self, events: list[ServerSentEvent | str]) -> None:
        if self._has_data and self._data_only:
            events.append("\n".join(self._data))
        elif self._has_data:
            events.append(
                ServerSentEvent(
                    data="\n".join(self._data),
                    event=self._event or "message",
                    id=self._last_id,
                    retry=self._retry,
                )
            )
        self._event = ""
        self._data.clear()
        self._data_size = 0
        self._has_data = False


def encode_sse(obj: Any) -> bytes:
    """`obj` as one SSE event: `data: <compact JSON>` and a blank line. The only producer of
    SSE data bytes in the project (with `SSE_DONE` and `encode_sse_comment`)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode("utf-8") + b"\n\n"


def encode_sse_comment(text: str = "keep-alive") -> bytes:
    """An SSE comment (`: text` and a blank line): every client ignores it, while proxies in
    between see traffic. Line breaks in `text` become spaces so it stays one comment."""
    flat = " ".join(text.splitlines())
    return b": " + flat.encode("utf-8") + b"\n\n"


def encode_sse_event(event: str, obj: Any) -> bytes:
    """`obj` as one SSE event named `event` (`event: <name>`, then `data: <compact JSON>`, a
    blank line), for the APIs whose clients dispatch on the event name (Anthropic Messages)."""
    return b"event: " + event.encode("utf-8") + b"\n" + encode_sse(obj)
