"""Validate a body against schemas/openai/openapi-subset.json itself, read the way OpenAPI means it.

This does not use the derived schemas/openai/<Component>.json files (scripts/openai_schemas.py
makes those): it reads the official components unchanged and gives their OpenAPI-only keywords
their meaning at validation time, so that a mistake in the derivation cannot hide a violation.

- `$ref`s resolve inside the subset document.
- `nullable: true` (OpenAPI 3.0, still used in the 3.1 spec): null is also allowed, whatever
  the schema's other keywords say.
- `$recursiveRef: "#"` points back at the one component carrying `$recursiveAnchor`.
- A null is accepted only where the spec types the place: a null in a property the spec does not
  describe (or describes as "anything") counts as forbidden — a typed client has no field for it,
  so we omit the field instead (the rule of issue 14).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema
from jsonschema import validators

SUBSET = Path(__file__).parent.parent / "schemas" / "openai" / "openapi-subset.json"
BASE = "urn:kimi-free-api:openapi-subset"
PREFIX = "#/components/schemas/"


@functools.cache
def subset() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SUBSET.read_text(encoding="utf-8"))
    return document


def _nullable_aware(check: Any) -> Any:
    def keyword(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
        if instance is None and schema.get("nullable") is True:
            return iter(())
        return check(validator, value, instance, schema) or iter(())

    return keyword


@functools.cache
def _validator_class() -> Any:
    base = jsonschema.Draft202012Validator
    anchored = [
        name for name, schema in subset()["components"]["schemas"].items()
        if schema.get("$recursiveAnchor")
    ]  # fmt: skip
    assert len(anchored) <= 1, f"ambiguous $recursiveRef: {anchored}"

    def recursive_ref(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
        assert value == "#", f"unsupported $recursiveRef {value!r}"
        assert anchored, "a $recursiveRef without a $recursiveAnchor"
        yield from validator.descend(instance, {"$ref": BASE + PREFIX + anchored[0]})

    keywords = {name: _nullable_aware(check) for name, check in base.VALIDATORS.items()}
    keywords["$recursiveRef"] = _nullable_aware(recursive_ref)
    return validators.extend(base, keywords)


@functools.cache
def _validator(component: str) -> Any:
    resource = referencing.jsonschema.DRAFT202012.create_resource(subset())
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(BASE, resource)
    schema = {"$ref": BASE + PREFIX + component}
    return _validator_class()(schema, registry=registry)


def _nulls(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if node is None:
        yield path
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _nulls(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _nulls(value, (*path, i))


def _replaced(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _replaced(node[path[0]], path[1:], value)
    return copy


#: one value of each JSON type: a place that accepts them all is one the spec does not type
_PROBES = ({"\x00probe": 1}, ["\x00probe"], "\x00probe", -1.5e308, True)


def openapi_errors(component: str, instance: Any) -> list[str]:
    """Every violation of the spec's `component` by `instance`, as one-line strings."""
    validator = _validator(component)
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    ]
    if errors:
        return errors
    # Every null passed: make sure each sits where the spec types the place (some JSON type is
    # refused there), not in a field the spec says nothing about.
    return [
        f"{'/'.join(map(str, path)) or '<root>'}: null where the spec declares no nullable field"
        for path in _nulls(instance)
        if all(validator.is_valid(_replaced(instance, path, probe)) for probe in _PROBES)
    ]


def assert_openapi_valid(component: str, instance: Any) -> None:
    errors = openapi_errors(component, instance)
    assert not errors, (
        f"{component} (official spec) violated:\n" + "\n".join(errors) + (f"\n{instance!r}")
    )
