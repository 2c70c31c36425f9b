"""The text we send Kimi about tools and JSON output, and how past calls and results read.

Kimi's web chat has no tool API, so tools are emulated by prompting: the model is shown the tools
and asked to answer with one markup that the stream parser (`_tool_parser.py`) recognises. All of
that text lives here, as data. With `tools` (here for one tool, `tool_choice` "auto", parallel
calls allowed) the posted prompt is the history, a blank line, then::

    <tool_instructions>
    You can call the tools below. The user's software runs a call and sends you its result.
    <tools>
    {"name": "get_weather", "description": "Weather of a city", "parameters": {"type": ...}}
    </tools>
    To call a tool, write this block with the arguments as one JSON object that matches the
      tool's parameters:
    <tool_call name="TOOL_NAME">
    {"argument": "value"}
    </tool_call>
    Rules:
    - Write real calls, never examples: no code block around a call, no quoting it.
    - You may write a short text before the call(s). Write nothing after them: end your reply.
    - To call several tools at once, write one block per call, one after another.
    - Never write a <tool_result> yourself: results come back to you in the next message as
      <tool_result name="TOOL_NAME" call_id="...">...</tool_result>.
    - Call a tool only when it helps; otherwise answer in plain text without any <tool_call>.
    </tool_instructions>

(the two indented continuation lines above belong to the line before them in the real text).
The last two rules change with `parallel_tool_calls` (`PARALLEL_RULES`) and `tool_choice`
(`CHOICE_RULES`). With a JSON `response_format` an `<output_format>` block follows (`OUTPUT_JSON`,
`OUTPUT_SCHEMA`).

History: an assistant turn's calls are rendered exactly as the model is asked to write them, after
its text, and a tool result as a `<tool_result>` block (`render_result`), so a multi-step agent
loop reads like one consistent conversation to the model, and the remembered exchange of an
answer with calls (`assistant_text`) is the text a client's resent history renders to.

Repair turns (one per answer, posted into the same Kimi conversation) start with `REPAIR_LEAD`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from translator._plan import ChatPlan, OutputFormat, ToolSpec

__all__ = [
    "CALL_CLOSE",
    "CHOICE_RULES",
    "OUTPUT_JSON",
    "OUTPUT_SCHEMA",
    "PARALLEL_RULES",
    "REPAIR_LEAD",
    "RESULT_CLOSE",
    "TOOLS_CLOSE",
    "TOOLS_OPEN",
    "assistant_text",
    "compose_prompt",
    "output_instructions",
    "plan_prompt",
    "render_call",
    "render_result",
    "repair_json_prompt",
    "repair_missing_call_prompt",
    "repair_tool_prompt",
    "tool_instructions",
    "tool_name_problem",
]

TOOLS_OPEN: Final = "<tool_instructions>"
TOOLS_CLOSE: Final = "</tool_instructions>"
CALL_CLOSE: Final = "</tool_call>"
RESULT_CLOSE: Final = "</tool_result>"

_HEAD: Final = (
    "You can call the tools below. The user's software runs a call and sends you its result."
)
_HOW: Final = (
    "To call a tool, write this block with the arguments as one JSON object that matches the "
    "tool's parameters:\n"
    '<tool_call name="TOOL_NAME">\n'
    '{"argument": "value"}\n'
    "</tool_call>\n"
    "Rules:\n"
    "- Write real calls, never examples: no code block around a call, no quoting it.\n"
    "- You may write a short text before the call(s). Write nothing after them: end your reply."
)
_RESULTS_RULE: Final = (
    "- Never write a <tool_result> yourself: results come back to you in the next message as "
    '<tool_result name="TOOL_NAME" call_id="...">...</tool_result>.'
)

#: the rule for `parallel_tool_calls` true / false
PARALLEL_RULES: Final[Mapping[bool, str]] = {
    True: "- To call several tools at once, write one block per call, one after another.",
    False: "- Call at most one tool in this reply.",
}

#: the rule per `tool_choice`; a named function uses "named" with `{name}` filled in
CHOICE_RULES: Final[Mapping[str, str]] = {
    "auto": (
        "- Call a tool only when it helps; otherwise answer in plain text without any <tool_call>."
    ),
    "required": "- You must call at least one tool in this reply.",
    "named": "- You must call the tool {name} in this reply.",
    "none": (
        "- The tools are not available for this reply: answer in plain text, without any "
        "<tool_call>."
    ),
}

OUTPUT_JSON: Final = (
    "<output_format>\n"
    "Reply with one JSON object and nothing else: no text before or after it, no code block.\n"
    "</output_format>"
)
OUTPUT_SCHEMA: Final = (
    "<output_format>\n"
    "Reply with one JSON object and nothing else: no text before or after it, no code block.\n"
    "The object must match this JSON Schema:\n"
    "{schema}\n"
    "</output_format>"
)

REPAIR_LEAD: Final = "Your previous reply cannot be used:"

#: what a tool name cannot hold: the call markup could not carry it back (a double quote ends
#: `name="..."`, an angle bracket the tag or a marker, a line break the opening line)
_NAME_BREAKERS: Final = frozenset('"<>\r\n')


def tool_name_problem(name: str) -> str | None:
    """Why `name` cannot be a tool's name (the model could never call it: the request is
    refused rather than spending a Kimi turn and a repair on it), or None."""
    if not name:
        return "a tool name must not be empty"
    if any(char in _NAME_BREAKERS for char in name):
        return f"the tool name {name!r} cannot hold a double quote, '<', '>' or a line break"
    return None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def tool_instructions(tools: Sequence[ToolSpec], tool_choice: str, parallel: bool) -> str:
    """The `<tool_instructions>` block for these tools (see the module doc)."""
    lines = [TOOLS_OPEN, _HEAD, "<tools>"]
    for tool in tools:
        entry: dict[str, Any] = {"name": tool.name}
        if tool.description:
            entry["description"] = tool.description
        entry["parameters"] = tool.parameters
        lines.append(_dumps(entry))
    lines += ["</tools>", _HOW, PARALLEL_RULES[parallel], _RESULTS_RULE]
    if tool_choice in CHOICE_RULES:
        lines.append(CHOICE_RULES[tool_choice])
    else:
        lines.append(CHOICE_RULES["named"].format(name=_dumps(tool_choice)))
    lines.append(TOOLS_CLOSE)
    return "\n".join(lines)


def output_instructions(output: OutputFormat) -> str:
    """The `<output_format>` block for a JSON `response_format`."""
    if output.schema is None:
        return OUTPUT_JSON
    return OUTPUT_SCHEMA.format(schema=_dumps(output.schema))


def compose_prompt(
    history: str,
    *,
    tools: Sequence[ToolSpec] = (),
    tool_choice: str = "auto",
    parallel: bool = True,
    output: OutputFormat | None = None,
) -> str:
    """`history` (the flattened messages) followed by the tool and output instructions, each
    after a blank line; `history` unchanged when there are none."""
    parts = [history]
    if tools:
        parts.append(tool_instructions(tools, tool_choice, parallel))
    if output is not None:
        parts.append(output_instructions(output))
    return "\n\n".join(parts)


def plan_prompt(plan: ChatPlan, history: str) -> str:
    """`compose_prompt` with the plan's tools and output format: the text to post for
    `history` (e.g. only the new turns when a conversation is continued)."""
    return compose_prompt(
        history,
        tools=plan.tools,
        tool_choice=plan.tool_choice,
        parallel=plan.parallel_tool_calls,
        output=plan.response_format,
    )


def render_call(name: str, arguments: str) -> str:
    """One call as the model is asked to write it (also how past calls read in the history).
    The name is written as a JSON string, which is the plain name for OpenAI's name charset."""
    return f"<tool_call name={_dumps(name)}>\n{arguments}\n{CALL_CLOSE}"


def render_result(name: str | None, call_id: str | None, content: str) -> str:
    """A tool's result in the history. A closing tag inside the content is defused so the
    block cannot end early."""
    attrs = ""
    if name is not None:
        attrs += f" name={_dumps(name)}"
    if call_id is not None:
        attrs += f" call_id={_dumps(call_id)}"
    body = content.replace(RESULT_CLOSE, "<\\/tool_result>")
    return f"<tool_result{attrs}>\n{body}\n{RESULT_CLOSE}"


def assistant_text(content: str, calls: Sequence[tuple[str, str]]) -> str:
    """An assistant turn with text `content` and calls (name, arguments) as history text."""
    rendered = [render_call(name, arguments) for name, arguments in calls]
    return "\n".join([content, *rendered] if content else rendered)


def repair_tool_prompt(error: str) -> str:
    """The repair turn after a call with an unknown name or invalid arguments."""
    return (
        f"{REPAIR_LEAD} {error}\n"
        "Reply again with only the corrected <tool_call> block(s), as the tool instructions say."
    )


def repair_missing_call_prompt(tool_choice: str) -> str:
    """The repair turn after an answer without a call when `tool_choice` demands one."""
    what = "one of the tools" if tool_choice == "required" else f"the tool {_dumps(tool_choice)}"
    return (
        f"{REPAIR_LEAD} it calls no tool, but this reply must call {what}.\n"
        "Reply again with only the <tool_call> block(s), as the tool instructions say."
    )


def repair_json_prompt(error: str) -> str:
    """The repair turn after an answer that is not the JSON `response_format` asks for."""
    return f"{REPAIR_LEAD} {error}\nReply again with only the JSON object."
