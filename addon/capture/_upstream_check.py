"""Kimi's own messages in a captured answer, checked against `schemas/kimi/`: schema violations
and unknown fields (keys the schema does not name), for `kimi-free-api replay`.

The schemas are permissive on purpose (unknown keys are allowed, so the proxy keeps working when
Kimi adds a field), which is exactly why replay lists the keys they do not name: a new field in
a capture is news about the protocol. An object whose schema names no properties at all
(`done`, `heartbeat`) is opaque: nothing below it is reported.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas import load_schema, schema_errors
from translator._errors import RemoteProtocolError
from translator._sse import SSEDecoder
from translator.connect._frames import EnvelopeDecoder

__all__ = ["UpstreamCheck", "check_upstream"]

_SCHEMAS: Final = {"legacy": "kimi.event", "connect": "kimi.connect_message"}
_MAX_VIOLATIONS: Final = 50


@dataclass(slots=True)
class UpstreamCheck:
    """`messages` read; `violations` (schema breaches of Kimi's messages); `unknown_fields`
    (dotted path → how many messages had it)."""

    messages: int = 0
    violations: list[str] = field(default_factory=list)
    unknown_fields: Counter[str] = field(default_factory=Counter)


def check_upstream(dialect: str, body: bytes) -> UpstreamCheck:
    """Check every message of a Kimi answer body (`dialect` "legacy" SSE or "connect"
    envelopes). Framing errors are left to the translator's report: reading stops there."""
    name = _SCHEMAS[dialect]
    schema = load_schema(name)
    out = UpstreamCheck()
    for message in _messages(dialect, body):
        out.messages += 1
        errors = schema_errors(name, message)
        if errors and len(out.violations) < _MAX_VIOLATIONS:
            out.violations += [f"kimi message {out.messages}: {e}" for e in errors]
        for path in sorted(set(_unknown(message, schema, schema, ""))):
            out.unknown_fields[path] += 1
    return out


def _messages(dialect: str, body: bytes) -> Iterator[Any]:
    try:
        if dialect == "connect":
            decoder = EnvelopeDecoder()
            payloads = [e.payload for e in decoder.feed(body)]
            decoder.close()
        else:
            sse = SSEDecoder()
            payloads = [e.data.encode() for e in [*sse.feed(body), *sse.close()]]
    except RemoteProtocolError:
        return
    for payload in payloads:
        try:
            yield json.loads(payload)
        except (ValueError, RecursionError):
            continue  # the translator reports it


def _resolve(node: Any, root: Mapping[str, Any]) -> Any:
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return {}
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = target
    return node


def _branches(node: Any, root: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """`node` and every subschema that may also apply to the same instance."""
    node = _resolve(node, root)
    if not isinstance(node, dict):
        return
    yield node
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key) or ():
            yield from _branches(sub, root)
    for key in ("then", "else"):
        if key in node:
            yield from _branches(node[key], root)


def _unknown(instance: Any, schema: Any, root: Mapping[str, Any], path: str) -> Iterator[str]:
    branches = list(_branches(schema, root))
    if isinstance(instance, dict):
        named: dict[str, list[Any]] = {}
        for branch in branches:
            for key, sub in (branch.get("properties") or {}).items():
                named.setdefault(key, []).append(sub)
        if not named:
            return  # opaque object
        for key, value in instance.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in named:
                yield where
            else:
                for sub in named[key]:
                    yield from _unknown(value, sub, root, where)
    elif isinstance(instance, list):
        for branch in branches:
            if "items" in branch:
                for item in instance:
                    yield from _unknown(item, branch["items"], root, f"{path}[]")
