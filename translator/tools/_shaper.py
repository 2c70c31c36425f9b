"""Shaping the model's answer text: tool calls, JSON output, stop strings and the token limit.

One `AnswerShaper` per chat completion that asks for any of these (`AnswerShaper.for_plan`); the
assembler gives it every piece of answer text and reasoning and writes only what it returns. The
stages, in order:

    tools    the streaming parser (`_tool_parser.py`): text before the first call passes on,
             call blocks are collected and validated at the end of the body; text after the
             first call is dropped (models go on to invent results)
    json     with a JSON `response_format`: the text is collected, and at the end the JSON value
             is extracted (fences and prose removed) and validated
    stop     the answer ends before the first stop string; only a trailing piece that could begin
             one is held back, so a stop string is never sent in part
    limit    the answer (content and reasoning) ends where its token estimate (`estimate_tokens`,
             what `usage` reports) would pass `max_tokens`

`stop` and `limit` set `cut` ("stop" / "length"): the answer is over and Kimi's stream may be
closed. `end()` (at the end of Kimi's body) decides the outcome: the answer (maybe with calls), a
repair turn to post into the same Kimi conversation (at most one per answer), or an error.

What happens when a repair also fails (docs/tools.md):

    tool_choice "required" or named   502 with the validation error
    tool_choice "auto"                the text already written is the answer (502 when there was
                                      none); invalid calls are not returned
    tool_choice "none"                no repair: calls never become tool_calls (the markup is
                                      dropped); an answer that is only a call is a 502
    response_format                   502 with the validation error
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from translator._errors import RemoteProtocolError
from translator._plan import ChatPlan, OutputFormat, ToolSpec
from translator._usage import token_weight

from ._calls import CallProblem, ToolCall, decode_json_value, validate_call
from ._json_schema import schema_problem
from ._parser import RawCall, ToolCallParser
from ._prompt import repair_json_prompt, repair_missing_call_prompt, repair_tool_prompt

__all__ = ["AnswerShaper", "Outcome"]

#: 12 twelfths per token: `estimate_tokens` counts in twelfths (see _usage.py)
_TWELFTHS: Final = 12


@dataclass(slots=True)
class Outcome:
    """What `end()` decided. Exactly one of: `repair` (post it, then feed the repair body),
    `error` (the answer fails), or neither (the answer is done: `text` then `calls`)."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    repair: str | None = None
    error: RemoteProtocolError | None = None


class AnswerShaper:
    """See the module doc."""

    def __init__(
        self,
        *,
        tools: tuple[ToolSpec, ...] = (),
        tool_choice: str = "auto",
        parallel: bool = True,
        output: OutputFormat | None = None,
        stop: tuple[str, ...] = (),
        max_tokens: int | None = None,
    ) -> None:
        self._tools: Mapping[str, ToolSpec] = {t.name: t for t in tools}
        self._choice = tool_choice
        self._parallel = parallel
        self._output = output
        self._stops = stop
        self._budget = None if max_tokens is None else max_tokens * _TWELFTHS
        self._parser = ToolCallParser() if tools else None
        self._raw: list[RawCall] = []
        self._json: list[str] = []
        self._held = ""  # a possible start of a stop string
        self._wrote = False  # answer text went out (before any repair)
        self._repaired = False
        #: "stop" or "length" once the answer was cut short
        self.cut: str | None = None
        #: the stop string that cut it (the earliest in the text), for APIs that report it
        self.stop_string: str | None = None

    @classmethod
    def for_plan(cls, plan: ChatPlan) -> AnswerShaper | None:
        """A shaper for `plan`, or None when the plan asks for nothing to shape (the plain path
        stays untouched)."""
        if not (plan.tools or plan.response_format or plan.stop or plan.max_tokens is not None):
            return None
        return cls(
            tools=plan.tools,
            tool_choice=plan.tool_choice,
            parallel=plan.parallel_tool_calls,
            output=plan.response_format,
            stop=plan.stop,
            max_tokens=plan.max_tokens,
        )

    # -- while the body streams ---------------------------------------------------------------

    def text(self, text: str) -> str:
        """The content to write now for the next piece of answer text (may be "")."""
        if self.cut is not None:
            return ""
        if self._parser is not None:
            text = self._take(self._parser.feed(text))
        if self._output is not None or self._repaired:
            # JSON is judged whole; a repair answer's prose is shown only if it calls nothing
            self._json.append(text)
            return ""
        return self._limit(self._stop(text))

    def reasoning(self, text: str) -> str:
        """The reasoning to write now: only the token limit applies to it."""
        if self.cut is not None:
            return ""
        return self._limit(text)

    def _take(self, pieces: list[str | RawCall]) -> str:
        out: list[str] = []
        for piece in pieces:
            if isinstance(piece, RawCall):
                self._raw.append(piece)
            elif not self._raw:
                out.append(piece)
        return "".join(out)

    def _stop(self, text: str) -> str:
        if not self._stops:
            return text
        data = self._held + text
        found = [(i, s) for s in self._stops if (i := data.find(s)) >= 0]
        if found:
            at, self.stop_string = min(found, key=lambda hit: hit[0])
            self.cut = "stop"
            self._held = ""
            return data[:at]
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(data)), hold, -1):
                if data.endswith(stop[:k]):
                    hold = k
                    break
        self._held = data[len(data) - hold :]
        return data[: len(data) - hold]

    def _limit(self, text: str) -> str:
        if self._budget is None or not text:
            return text
        cost = 3 * len(text) if text.isascii() else sum(token_weight(ord(c)) for c in text)
        if cost <= self._budget:
            self._budget -= cost
            return text
        for i, ch in enumerate(text):
            weight = token_weight(ord(ch))
            if weight > self._budget:
                self.cut = "length"
                return text[:i]
            self._budget -= weight
        raise AssertionError("unreachable: the cost exceeded the budget")

    # -- at the end of a body -----------------------------------------------------------------

    def end(self, *, wrote: bool) -> Outcome:
        """Kimi's body ended (`wrote`: answer text already went to the client)."""
        self._wrote = self._wrote or wrote
        if self.cut is not None:
            return Outcome()
        rest = ""
        if self._parser is not None:
            rest = self._take(self._parser.close())
        if self._output is not None or self._repaired:
            self._json.append(rest)
            rest = ""
        else:
            rest = self._release(rest)
        if self._parser is not None and self._choice != "none":
            outcome = self._tool_outcome(rest)
            if outcome is not None:
                return outcome
        elif self._raw and not (rest or self._wrote or self._output is not None):
            # tool_choice "none", and the answer is nothing but a call: not Kimi's throttling
            return Outcome(error=_failure("the model called a tool although tool_choice is none"))
        if self._output is not None:
            return self._json_outcome()
        if self._repaired:
            # auto, and the repair answer calls nothing: its text is the answer
            rest = self._release("".join(self._json))
            if not (rest or self._wrote):
                return Outcome(error=_failure("the model's tool call is invalid"))
        return Outcome(text=rest)

    def _release(self, text: str) -> str:
        """The last text of a body through stop and limit, with any held stop prefix."""
        text = self._limit(self._stop(text))
        if self.cut is None:
            text += self._limit(self._held)
            self._held = ""
        return text

    def begin_repair(self) -> None:
        """The repair turn was posted: its body is a new answer to parse, whose prose is not
        shown (the client already has the first answer's text)."""
        self._repaired = True
        self._parser = ToolCallParser() if self._parser is not None else None
        self._raw = []
        self._json = []

    def _tool_outcome(self, rest: str) -> Outcome | None:
        """The outcome when calls decide it, else None (a plain or JSON answer)."""
        raws = self._raw if self._parallel else self._raw[:1]
        checked = [validate_call(r, self._tools) for r in raws]
        problems = [c.message for c in checked if isinstance(c, CallProblem)]
        calls = [c for c in checked if isinstance(c, ToolCall)]
        if self._choice not in ("auto", "required") and not problems:
            wrong = [c.name for c in calls if c.name != self._choice]
            if wrong:
                problems.append(f"this reply must call {self._choice!r}, not {wrong[0]!r}")
        if problems:
            error = "; ".join(problems)
            if not self._repaired:
                return Outcome(text=rest, repair=repair_tool_prompt(error))
            if self._choice == "auto" and self._wrote:
                return Outcome()
            return Outcome(error=_failure(f"the model's tool call is invalid: {error}"))
        if calls:
            return Outcome(text=rest, calls=calls)
        if self._choice == "auto":
            return None
        if not self._repaired:
            return Outcome(text=rest, repair=repair_missing_call_prompt(self._choice))
        return Outcome(
            error=_failure("the model did not call a tool although tool_choice says it must")
        )

    def _json_outcome(self) -> Outcome:
        output = self._output
        assert output is not None
        text = "".join(self._json)
        problem: str | None
        try:
            value = decode_json_value(_from_first_brace(text))
        except ValueError:
            problem, value = "the reply does not contain a JSON object", None
        else:
            if not isinstance(value, dict):
                problem = "the reply must be a JSON object"
            elif output.schema is not None:
                found = schema_problem(value, output.schema)
                problem = None if found is None else f"the JSON does not match the schema: {found}"
            else:
                problem = None
        if problem is None:
            answer = self._limit(self._stop(json.dumps(value, ensure_ascii=False)))
            return Outcome(text=answer)
        if not self._repaired:
            return Outcome(repair=repair_json_prompt(problem))
        return Outcome(error=_failure(f"the model's answer is not the JSON asked for: {problem}"))


def _from_first_brace(text: str) -> str:
    """The text from its first "{" on: a fence or prose before the JSON object is skipped (and
    `decode_json_value` ignores what follows it)."""
    brace = text.find("{")
    return text if brace < 0 else text[brace:]


def _failure(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, status=502, code="invalid_model_output")
