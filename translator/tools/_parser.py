"""The streaming tool-call parser: the model's answer text, in any pieces → text and call blocks.

`ToolCallParser.feed(text)` takes the next piece of the answer (however the stream was cut) and
returns what is certain so far: `str` pieces of plain text and `RawCall`s; `close()` returns the
rest at the end of the answer. The result is the same for every split of the same answer (a
property test checks this). Only a trailing piece that could still begin a call marker is held
back; everything before it is returned at once.

Markups recognised (docs/tools.md, "What the parser accepts"):

    <tool_call name="NAME">{json}</tool_call>          ours (the one we ask for); `name=`
                                                        may use ' or no quotes
    <tool_call>{"name": N, "arguments": {json}}</tool_call>    Hermes / Qwen ("parameters" too)
    <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
        <|tool_call_argument_begin|>{json}<|tool_call_end|><|tool_calls_section_end|>
                                                        Kimi K2's native markup (also the
                                                        singular `tool_call_section`, or a bare
                                                        `<|tool_call_begin|>` without a section)

Tolerated: whitespace anywhere around the parts; a missing closing tag at the end of the answer
(or before the next call); a JSON code fence around the arguments. A marker inside a fenced code
block (``` at the start of a line) or inside inline code (`...`) is text, not a call: it is
an example. Arguments are returned as raw text; `_tool_calls.py` decodes and validates them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["RawCall", "ToolCallParser"]


@dataclass(frozen=True, slots=True)
class RawCall:
    """One call block as the model wrote it. `name` is None when the block names no tool
    (Hermes form: the name is inside the JSON body, `arguments` is then the whole body)."""

    name: str | None
    arguments: str
    #: "ours", "hermes" or "kimi": which markup it came in
    markup: str


_OURS: Final = "<tool_call"
_KIMI_SECTION: Final = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
_KIMI_CALL: Final = "<|tool_call_begin|>"
_STARTS: Final = (_OURS, *_KIMI_SECTION, _KIMI_CALL)
#: every proper prefix of a start marker that ends a piece must be held back
_PREFIXES: Final = frozenset(m[:i] for m in _STARTS for i in range(1, len(m)))
_HOLD: Final = _PREFIXES | {_OURS}
_LONGEST: Final = max(len(m) for m in _STARTS)
_SPECIAL: Final = re.compile(r"[<`\n]")

_OPEN_TAG: Final = re.compile(r"<tool_call(\s[^>]*)?>")
_NAME_ATTR: Final = re.compile(r"\bname\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))")
#: an opening tag longer than this is not one (the "<" was text)
_MAX_OPEN_TAG: Final = 256
#: where an open call of ours / Hermes ends: its closing tag, or the next call's start
_OURS_END: Final = re.compile(r"</tool_call\s*>|<tool_call[\s>]")
_KIMI_END: Final = re.compile(r"<\|tool_calls?_section_end\|>")
_KIMI_ITEM: Final = re.compile(
    r"<\|tool_call_begin\|>\s*(.*?)\s*<\|tool_call_argument_begin\|>(.*?)(?:<\|tool_call_end\|>|$)",
    re.S,
)
_KIMI_NAME: Final = re.compile(r"^(?:functions\.)?(.*?)(?::\d+)?$", re.S)


class ToolCallParser:
    """See the module doc. Not thread-safe; one per answer (or per repair turn)."""

    def __init__(self) -> None:
        self._held = ""  # text not yet decided (a possible marker start, or an open block)
        self._block: str | None = None  # the open block's kind: "ours" / "kimi" / "kimi_call"
        self._fence = False  # inside a fenced code block
        self._inline = 0  # length of the backtick run that opened an inline code span
        self._ticks = 0  # backticks in the current run
        self._line_start = True  # only spaces since the last newline
        self._tick_line_start = False  # the current backtick run began a line

    def feed(self, text: str) -> list[str | RawCall]:
        """The pieces of the answer that are certain after `text` (see the module doc)."""
        if self._block is None and not self._held and _SPECIAL.search(text) is None:
            # The hot path: plain prose. Only the code-span state can change.
            self._settle_ticks()
            if text:
                self._line_start = self._line_start and not text.strip(" ")
            return [text] if text else []
        return self._scan(self._held + text, final=False)

    def close(self) -> list[str | RawCall]:
        """The end of the answer: the rest, with an unclosed block parsed as far as it goes."""
        data, self._held = self._held, ""
        if self._block is not None:
            block, self._block = self._block, None
            return _parse_block(block, data)
        return self._scan(data, final=True)

    # -- scanning ----------------------------------------------------------------------------

    def _scan(self, data: str, *, final: bool) -> list[str | RawCall]:
        out: list[str | RawCall] = []
        self._held = ""
        pos = 0
        while pos < len(data):
            if self._block is not None:
                end = self._block_end(data, pos)
                if end is None:
                    self._held = data[pos:]
                    return out
                body_end, resume = end
                out.extend(_parse_block(self._block, data[pos:body_end]))
                self._block = None
                pos = resume
                continue
            match = _SPECIAL.search(data, pos)
            if match is None:
                self._text(out, data[pos:])
                self._settle_ticks()
                self._line_start = self._line_start and not data[pos:].strip(" ")
                break
            at = match.start()
            if at > pos:
                self._settle_ticks()
                chunk = data[pos:at]
                self._line_start = self._line_start and not chunk.strip(" ")
                self._text(out, chunk)
            ch = data[at]
            if ch == "`":
                if self._ticks == 0:
                    self._tick_line_start = self._line_start
                self._ticks += 1
                self._line_start = False
                self._text(out, ch)
                pos = at + 1
            elif ch == "\n":
                self._settle_ticks()
                self._inline = 0  # an unclosed inline span ends with its line
                self._line_start = True
                self._text(out, ch)
                pos = at + 1
            else:  # "<"
                self._settle_ticks()
                self._line_start = False
                pos = self._at_angle(out, data, at, final)
                if pos < 0:
                    return out
        return out

    def _at_angle(self, out: list[str | RawCall], data: str, at: int, final: bool) -> int:
        """`data[at]` is "<": start a block, hold a possible marker start, or pass it on.
        Returns where to continue, or -1 when the rest is held."""
        if self._fence or self._inline:
            self._text(out, "<")
            return at + 1
        rest = data[at : at + _LONGEST]
        for marker in _STARTS:
            if rest.startswith(marker):
                if marker == _OURS:
                    after = data[at + len(_OURS) : at + len(_OURS) + 1]
                    if not after:
                        break  # "<tool_call" at the very end: wait for the next character
                    if not (after == ">" or after.isspace()):
                        continue  # "<tool_calls>", "<tool_callback": not ours
                    tag_end = data.find(">", at, at + _MAX_OPEN_TAG)
                    if tag_end < 0 and (final or len(data) - at >= _MAX_OPEN_TAG):
                        break  # no opening tag after all: text
                    if tag_end < 0:
                        self._held = data[at:]
                        return -1
                    self._block = "ours"
                elif marker == _KIMI_CALL:
                    self._block = "kimi_call"
                else:
                    self._block = "kimi"
                # The block starts at its marker, which `_block_end` skips.
                self._held = ""
                end = self._block_end(data, at)
                if end is None:
                    self._held = data[at:]
                    return -1
                body_end, resume = end
                block, self._block = self._block, None
                out.extend(_parse_block(block, data[at:body_end]))
                return resume
        if not final and data[at:] in _HOLD:
            self._held = data[at:]
            return -1
        self._text(out, "<")
        return at + 1

    def _block_end(self, data: str, start: int) -> tuple[int, int] | None:
        """For the open block starting at `start`: (end of its text, where scanning resumes),
        or None while its end has not arrived."""
        if self._block == "ours":
            # `_at_angle` opened the block only once the tag's ">" had arrived
            opened = _OPEN_TAG.match(data, start)
            assert opened is not None
            match = _OURS_END.search(data, opened.end())
            if match is None:
                return None
            if match[0].startswith("</"):
                return match.start(), match.end()
            return match.start(), match.start()  # the next call starts here
        if self._block == "kimi":
            match = _KIMI_END.search(data, start)
            return None if match is None else (match.start(), match.end())
        end = data.find("<|tool_call_end|>", start)
        return None if end < 0 else (end, end + len("<|tool_call_end|>"))

    # -- code spans --------------------------------------------------------------------------

    def _settle_ticks(self) -> None:
        """A run of backticks ended: it opens or closes a fence or an inline code span."""
        run, self._ticks = self._ticks, 0
        if not run:
            return
        if run >= 3 and self._tick_line_start and not self._inline:
            self._fence = not self._fence
        elif not self._fence:
            if not self._inline:
                self._inline = run
            elif self._inline == run:
                self._inline = 0

    @staticmethod
    def _text(out: list[str | RawCall], text: str) -> None:
        if out and isinstance(out[-1], str):
            out[-1] += text
        else:
            out.append(text)


def _parse_block(kind: str, block: str) -> list[str | RawCall]:
    """A complete (or, at the end, truncated) block → its calls. A Kimi section without any
    call in it gives nothing."""
    if kind == "ours":
        opened = _OPEN_TAG.match(block)
        assert opened is not None  # a block of ours starts with its complete opening tag
        attr = _NAME_ATTR.search(opened[1] or "")
        name = None if attr is None else next(g for g in attr.groups() if g is not None)
        body = block[opened.end() :]
        return [RawCall(name, body.strip(), "ours" if name is not None else "hermes")]
    calls: list[str | RawCall] = []
    for item in _KIMI_ITEM.finditer(block):
        name_match = _KIMI_NAME.match(item[1])
        assert name_match is not None  # the pattern matches any text
        calls.append(RawCall(name_match[1].strip(), item[2].strip(), "kimi"))
    return calls
