#!/usr/bin/env python3
"""Take schemas/openai from the official OpenAI OpenAPI spec (openai/openai-openapi).

    scripts/openai_schemas.py SPEC.json [--commit SHA] [--date YYYY-MM-DD] [--out schemas/openai]

writes
  openapi-subset.json  the spec's components we use, with every $ref they reach, unchanged, and
                       the spec's version and the commit it came from;
  <name>.json          one self-contained JSON Schema (draft 2020-12) per body we accept or emit,
                       derived from the subset (see `derive`).

SPEC may also be a previously written openapi-subset.json: deriving from it gives the same files,
which is what tests/test_openai_spec.py checks (the derived files are generated, never edited).

Getting the spec (the snapshot this repository was built from is recorded in the subset):
    git -C <clone of openai/openai-openapi> show HEAD:openapi.json > /tmp/openapi.json

How the OpenAPI 3.x schema dialect becomes JSON Schema:
- `$ref: #/components/schemas/X` → `$ref: #/$defs/X`; every reached component is copied to $defs.
- `nullable: true` (OpenAPI 3.0, still used by the 3.1 spec) means "null is also allowed":
  `type: T` becomes `type: [T, "null"]` (and `null` joins an `enum`); any other schema becomes
  `anyOf: [{type: null}, <schema>]`. `nullable: false` is the default and is dropped.
- `$recursiveRef: "#"` (JSON Schema 2019-09, used by CompoundFilter under its `$recursiveAnchor`)
  points back at the component that holds the anchor; it becomes a `$ref` to that component.
- Annotations validation never reads (description, title, example(s), discriminator, x-*) are
  dropped to keep the files small; no validating keyword is changed.
Recursion is kept (jsonschema handles it). Hypothesis cannot generate from a recursive schema, so
tests/test_request_properties.py generates from `request_projection` (documented there) and
validates against the full derived request schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SOURCE_REPOSITORY = "https://github.com/openai/openai-openapi"
COMPONENT_PREFIX = "#/components/schemas/"

# The Responses API stream events we emit (a subset of ResponseStreamEvent's members).
RESPONSE_EVENTS = [
    "ResponseCreatedEvent",
    "ResponseInProgressEvent",
    "ResponseOutputItemAddedEvent",
    "ResponseOutputItemDoneEvent",
    "ResponseContentPartAddedEvent",
    "ResponseContentPartDoneEvent",
    "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent",
    "ResponseOutputTextAnnotationAddedEvent",
    "ResponseRefusalDeltaEvent",
    "ResponseRefusalDoneEvent",
    "ResponseFunctionCallArgumentsDeltaEvent",
    "ResponseFunctionCallArgumentsDoneEvent",
    "ResponseReasoningSummaryPartAddedEvent",
    "ResponseReasoningSummaryPartDoneEvent",
    "ResponseReasoningSummaryTextDeltaEvent",
    "ResponseReasoningSummaryTextDoneEvent",
    "ResponseReasoningTextDeltaEvent",
    "ResponseReasoningTextDoneEvent",
    "ResponseCompletedEvent",
    "ResponseIncompleteEvent",
    "ResponseFailedEvent",
    "ResponseErrorEvent",
]

# derived file → the component(s) it validates (several mean "any one of them")
DERIVED: dict[str, tuple[str, list[str]]] = {
    f"{name}.json": (name, [name])
    for name in [
        "CreateChatCompletionRequest",
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
        "ListModelsResponse",
        "Model",
        "ErrorResponse",
        "CreateResponse",
        "Response",
    ]
}
DERIVED["ResponseStreamEvent.json"] = ("ResponseStreamEvent (the members we emit)", RESPONSE_EVENTS)

ANNOTATIONS = {"description", "title", "example", "examples", "discriminator"}


def used_components() -> list[str]:
    names: list[str] = []
    for _, roots in DERIVED.values():
        names += [n for n in roots if n not in names]
    return names


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def reachable(components: dict[str, Any], roots: Iterable[str]) -> list[str]:
    """`roots` and every component their $refs reach, sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for ref in _refs(components[name]):
            if not ref.startswith(COMPONENT_PREFIX):
                raise ValueError(f"{name}: unexpected $ref {ref}")
            todo.append(ref.removeprefix(COMPONENT_PREFIX))
    return sorted(seen)


def subset(spec: dict[str, Any], commit: str | None, date: str | None) -> dict[str, Any]:
    components = spec["components"]["schemas"]
    names = reachable(components, used_components())
    source = dict(spec.get("x-kimi-free-api-source", {}))
    source.setdefault("repository", SOURCE_REPOSITORY)
    source.setdefault("path", "openapi.json")
    if commit:
        source["commit"] = commit
    if date:
        source["date"] = date
    source["roots"] = used_components()
    return {
        "openapi": spec["openapi"],
        "info": {"title": spec["info"]["title"], "version": spec["info"]["version"]},
        "x-kimi-free-api-source": source,
        "components": {"schemas": {name: components[name] for name in names}},
    }


def convert(node: Any, component: str) -> Any:
    """One OpenAPI schema object as JSON Schema 2020-12 (see the module docstring)."""
    if isinstance(node, list):
        return [convert(value, component) for value in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ANNOTATIONS or key.startswith("x-") or key in ("nullable", "$recursiveAnchor"):
            continue
        if key == "$ref":
            out[key] = "#/$defs/" + value.removeprefix(COMPONENT_PREFIX)
        elif key == "$recursiveRef":
            if value != "#":
                raise ValueError(f"{component}: unsupported $recursiveRef {value}")
            out["$ref"] = "#/$defs/" + component
        elif key in ("properties", "patternProperties", "$defs"):
            out[key] = {name: convert(sub, component) for name, sub in value.items()}
        elif key in ("enum", "const", "default", "required"):
            out[key] = value
        else:
            out[key] = convert(value, component)
    if node.get("nullable") is True:
        out = _nullable(out)
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if not schema or schema == {"deprecated": True}:
        return schema  # already accepts anything, null included
    if isinstance(schema.get("type"), str):
        schema = {**schema, "type": [schema["type"], "null"]}
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    return {"anyOf": [{"type": "null"}, schema]}


def derive(spec: dict[str, Any], title: str, roots: list[str], filename: str) -> dict[str, Any]:
    components = spec["components"]["schemas"]
    names = reachable(components, roots)
    info = spec["info"]["version"]
    commit = spec.get("x-kimi-free-api-source", {}).get("commit", "unknown commit")
    top: dict[str, Any] = (
        {"$ref": "#/$defs/" + roots[0]}
        if len(roots) == 1
        else {"anyOf": [{"$ref": "#/$defs/" + name} for name in roots]}
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://kimi-free-api.invalid/schemas/openai/{filename}",
        "title": f"{title} (official OpenAI spec {info})",
        "description": (
            f"Generated by scripts/openai_schemas.py from openapi-subset.json (openai/openai-"
            f"openapi {info}, commit {commit}); do not edit. See schemas/openai/README.md."
        ),
        **top,
        "$defs": {name: convert(components[name], name) for name in names},
    }


def dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def generate(
    spec: dict[str, Any], commit: str | None = None, date: str | None = None
) -> dict[str, str]:
    """filename → text of every file this script writes."""
    sub = subset(spec, commit, date)
    files = {"openapi-subset.json": dump(sub)}
    for filename, (title, roots) in DERIVED.items():
        files[filename] = dump(derive(sub, title, roots, filename))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="openapi.json of openai/openai-openapi")
    parser.add_argument("--commit", help="the openai-openapi commit the spec file is from")
    parser.add_argument("--date", help="that commit's date (YYYY-MM-DD)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "schemas/openai")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    for filename, text in generate(spec, args.commit, args.date).items():
        (args.out / filename).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / filename} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
