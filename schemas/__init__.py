"""JSON schemas of what kimi-free-api accepts and emits, and one way to load and apply them.

The schemas are hand-trimmed, non-recursive subsets of the official OpenAI API reference and of
Kimi's web protocol (see docs/upstream-protocol.md), so that Hypothesis can generate from them.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema

__all__ = ["SCHEMA_NAMES", "load_schema", "schema_errors", "validator"]

#: name → file, relative to this package
SCHEMA_NAMES: dict[str, str] = {
    "openai.request": "openai/chat-completion-request.json",
    "openai.response": "openai/chat-completion.json",
    "openai.chunk": "openai/chat-completion-chunk.json",
    "openai.error": "openai/error.json",
    "openai.models": "openai/model-list.json",
    "kimi.completion_request": "kimi/completion-request.json",
    "kimi.event": "kimi/stream-event.json",
    "kimi.connect_request": "kimi/connect-chat-request.json",
    "kimi.connect_message": "kimi/connect-stream-message.json",
}


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema called `name` (a key of SCHEMA_NAMES)."""
    path = resources.files(__package__).joinpath(SCHEMA_NAMES[name])
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@functools.cache
def validator(name: str) -> Any:
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(name: str, instance: Any) -> list[str]:
    """Every violation of schema `name` by `instance`, as readable one-line strings."""
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator(name).iter_errors(instance), key=lambda e: list(e.path))
    ]
