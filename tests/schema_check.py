"""Every translator output in a test goes through `assert_valid`."""

from __future__ import annotations

from typing import Any

from schemas import schema_errors


def assert_valid(schema: str, instance: Any) -> None:
    errors = schema_errors(schema, instance)
    assert not errors, f"{schema} violated:\n" + "\n".join(errors) + f"\n{instance!r}"
