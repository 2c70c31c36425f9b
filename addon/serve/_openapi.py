"""The OpenAPI document of the proxy's own HTTP API, served at `/openapi.json`.

`addon/serve/openapi.json` is written by hand and names the project's JSON Schemas by their name in
`schemas.SCHEMA_NAMES` (`{"$ref": "schemas:openai.request.accepted"}`), so the API description
and the schemas the tests validate against cannot drift apart. Served, the document is
self-contained: each named schema is bundled under `components/schemas`, its `$defs` hoisted
next to it (`openai.request.accepted__assistantMessage`) and its internal `$ref`s rewritten to
match.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from schemas import load_schema

__all__ = ["openapi_bytes", "openapi_document"]

_SCHEMA_PREFIX = "schemas:"
_COMPONENTS = "#/components/schemas/"


def _load_schema(name: str) -> dict[str, Any]:
    # A copy: the bundler takes the schema apart.
    schema: dict[str, Any] = json.loads(json.dumps(load_schema(name)))
    return schema


class _Bundler:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def reference(self, name: str) -> str:
        """The internal ref for the schema called `name` (schemas.SCHEMA_NAMES), bundling it
        once."""
        if name not in self.components:
            self.components[name] = {}  # placeholder: a schema may refer to itself
            schema = _load_schema(name)
            defs = schema.pop("$defs", {})
            for key in ("$schema", "$id"):
                schema.pop(key, None)
            for def_name, definition in defs.items():
                self.components[f"{name}__{def_name}"] = self.rewrite(definition, name)
            self.components[name] = self.rewrite(schema, name)
        return _COMPONENTS + name

    def rewrite(self, node: Any, owner: str | None) -> Any:
        """`node` with every `$ref` pointing into the bundled document."""
        if isinstance(node, list):
            return [self.rewrite(item, owner) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                out[key] = self._target(value, owner)
            else:
                out[key] = self.rewrite(value, owner)
        return out

    def _target(self, ref: str, owner: str | None) -> str:
        if ref.startswith(_SCHEMA_PREFIX):
            return self.reference(ref.removeprefix(_SCHEMA_PREFIX))
        if owner is not None and ref == "#":
            return _COMPONENTS + owner
        if owner is not None and ref.startswith("#/$defs/"):
            def_name, _, rest = ref.removeprefix("#/$defs/").partition("/")
            return f"{_COMPONENTS}{owner}__{def_name}" + (f"/{rest}" if rest else "")
        return ref


@functools.cache
def openapi_bytes() -> bytes:
    """The self-contained OpenAPI 3.1 document as served (built once)."""
    text = resources.files("addon.serve").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    bundler = _Bundler()
    document = bundler.rewrite(document, None)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(bundler.components)
    return json.dumps(document, ensure_ascii=False).encode()


def openapi_document() -> dict[str, Any]:
    """The self-contained OpenAPI 3.1 document (a fresh copy: callers may change it)."""
    document: dict[str, Any] = json.loads(openapi_bytes())
    return document
