"""JSON Schema checks for tool parameters and `response_format` schemas (jsonschema is pure).

A client sends the same tool schemas with every request of an agent loop, so a validator is built
once per distinct schema (keyed by its canonical JSON) and kept in a small cache. jsonschema is
imported on first use: it loads `datetime`, `random` and `uuid` (for format checkers), which a
plain `import translator` must not (tests/test_sans_io.py); it never uses them for randomness here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from translator._errors import LocalProtocolError

__all__ = ["check_schema", "schema_problem"]


@lru_cache(maxsize=256)
def _validator(canonical: str) -> Any:
    import jsonschema

    schema = json.loads(canonical)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def _canonical(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, ensure_ascii=False)


def check_schema(schema: Mapping[str, Any], param: str) -> None:
    """Refuse a schema that is not a valid JSON Schema (400, `param` names it).

    Raises:
        LocalProtocolError: code "invalid_value".
    """
    from jsonschema.exceptions import SchemaError

    try:
        _validator(_canonical(schema))
    except SchemaError as exc:
        raise LocalProtocolError(
            f"{param}: not a valid JSON Schema: {exc.message}", param=param, code="invalid_value"
        ) from None


def schema_problem(instance: Any, schema: Mapping[str, Any]) -> str | None:
    """None when `instance` matches `schema` (already checked by `check_schema`), else a short
    description of the first problem, written for the model to fix it."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator(_canonical(schema)).iter_errors(instance))
    if error is None:
        return None
    where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{where.lstrip('.') or 'the value'}: {error.message}"
