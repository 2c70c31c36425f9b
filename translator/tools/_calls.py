"""A parsed call block → a validated call: a declared name and arguments that match its schema.

Drift tolerated here (docs/tools.md): a JSON code fence around the arguments, text after the JSON
value (an unclosed block at the end of an answer), arguments given as a JSON string that holds the
object, an empty body (no arguments: `{}`), and the Hermes form whose body names the tool
(`{"name": …, "arguments": …}` or `"parameters"`). What is still wrong is described for the model,
which gets one repair turn (`_answer_shaper.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from translator._plan import ToolSpec

from ._json_schema import schema_problem
from ._parser import RawCall

__all__ = ["CallProblem", "ToolCall", "decode_json_value", "validate_call"]

_FENCE: Final = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```", re.S)
_DECODER: Final = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call that is known good: `arguments` is the canonical JSON text of the object."""

    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class CallProblem:
    """Why a call block cannot be used, written for the model (the repair turn quotes it)."""

    message: str


def decode_json_value(text: str) -> Any:
    """The first JSON value in `text` (after whitespace, inside a code fence if there is one);
    what follows it is ignored.

    Raises:
        ValueError: there is no JSON value at the start.
    """
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced is not None:
        text = fenced[1].strip()
    value, _end = _DECODER.raw_decode(text)
    return value


def validate_call(raw: RawCall, tools: Mapping[str, ToolSpec]) -> ToolCall | CallProblem:
    """`raw` as a `ToolCall` when its tool is declared and its arguments match the schema."""
    name, arguments = raw.name, raw.arguments
    if name is None:
        try:
            body = decode_json_value(arguments)
        except ValueError:
            return CallProblem('the <tool_call> block must name the tool: <tool_call name="…">')
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return CallProblem('the <tool_call> block must name the tool: <tool_call name="…">')
        name = body["name"]
        value: Any = body.get("arguments", body.get("parameters", {}))
    elif not arguments:
        value = {}
    else:
        try:
            value = decode_json_value(arguments)
        except ValueError as exc:
            return CallProblem(f"the arguments of {name} are not valid JSON ({exc})")
    tool = tools.get(name)
    if tool is None:
        known = ", ".join(tools) or "none"
        return CallProblem(f"there is no tool named {name!r}; the tools are: {known}")
    if isinstance(value, str):
        # Arguments written as a JSON string that holds the object.
        try:
            value = decode_json_value(value)
        except ValueError:
            return CallProblem(f"the arguments of {name} must be a JSON object, not a string")
    if not isinstance(value, dict):
        return CallProblem(f"the arguments of {name} must be a JSON object")
    problem = schema_problem(value, tool.parameters)
    if problem is not None:
        return CallProblem(f"the arguments of {name} do not match its parameters: {problem}")
    return ToolCall(name=name, arguments=json.dumps(value, ensure_ascii=False))
