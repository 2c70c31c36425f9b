"""schemas/openai comes from the official OpenAI spec, and our bodies follow it to the letter.

- the derived schemas are exactly what scripts/openai_schemas.py makes from the committed subset;
- the OpenAPI-aware check (tests/openapi_check.py) fails on a null the spec forbids;
- a sample of every endpoint's bodies passes that check against openapi-subset.json directly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from fixtures.golden import list_scenarios, load_scenario, replay
from schemas import SCHEMA_NAMES, schema_errors
from tests.openapi_check import assert_openapi_valid, openapi_errors, subset
from translator.chat._fold import fold_completion
from translator.connect._stream import ConnectDecoder
from translator.legacy._stream import LegacyDecoder

ROOT = Path(__file__).parent.parent
OPENAI = ROOT / "schemas" / "openai"


def _script():
    path = ROOT / "scripts" / "openai_schemas.py"
    spec = importlib.util.spec_from_file_location("openai_schemas", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the files --------------------------------------------------------------------------------


def test_subset_records_the_spec_it_was_taken_from():
    document = subset()
    assert document["info"]["version"] == "2.3.0"
    source = document["x-kimi-free-api-source"]
    assert source["repository"] == "https://github.com/openai/openai-openapi"
    assert source["commit"] == "f85dbe223d40e1a31cba812ab2d755c7e98a92a3"


def test_derived_schemas_are_regenerated_from_the_subset_unchanged():
    """Editing a derived file by hand (or the script without regenerating) fails here."""
    script = _script()
    files = script.generate(subset())
    for filename, text in files.items():
        assert (OPENAI / filename).read_text(encoding="utf-8") == text, (
            f"schemas/openai/{filename} is stale: run scripts/openai_schemas.py "
            "schemas/openai/openapi-subset.json"
        )


def test_every_derived_schema_is_registered():
    registered = {path.removeprefix("openai/") for path in SCHEMA_NAMES.values()}
    assert set(_script().DERIVED) <= registered


def test_nullable_becomes_a_null_type_exactly_where_the_spec_says():
    convert = _script().convert
    assert convert({"type": "string", "nullable": True}, "X") == {"type": ["string", "null"]}
    assert convert({"type": "string", "enum": ["a"], "nullable": True}, "X") == {
        "type": ["string", "null"],
        "enum": ["a", None],
    }
    assert convert({"$ref": "#/components/schemas/Y", "nullable": True}, "X") == {
        "anyOf": [{"type": "null"}, {"$ref": "#/$defs/Y"}]
    }
    assert convert({"type": "string", "nullable": False}, "X") == {"type": "string"}
    assert convert({"type": "string"}, "X") == {"type": "string"}
    # a property called "nullable" is a name, not the keyword
    assert convert({"properties": {"nullable": {"type": "boolean"}}}, "X") == {
        "properties": {"nullable": {"type": "boolean"}}
    }
    assert convert({"$recursiveRef": "#"}, "Filter") == {"$ref": "#/$defs/Filter"}


# --- the check can fail -----------------------------------------------------------------------

CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "kimi",
    "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}
    ],
}


def test_a_well_formed_chunk_passes():
    assert openapi_errors("CreateChatCompletionStreamResponse", CHUNK) == []


def test_system_fingerprint_null_is_refused_by_the_spec_check_and_the_derived_schema():
    chunk = {**CHUNK, "system_fingerprint": None}
    errors = openapi_errors("CreateChatCompletionStreamResponse", chunk)
    assert errors == ["system_fingerprint: None is not of type 'string'"]
    with pytest.raises(AssertionError, match="system_fingerprint"):
        assert_openapi_valid("CreateChatCompletionStreamResponse", chunk)


def test_a_null_in_a_field_the_spec_does_not_describe_is_refused():
    chunk = json.loads(json.dumps(CHUNK))
    chunk["choices"][0]["delta"]["reasoning_content"] = None
    assert openapi_errors("CreateChatCompletionStreamResponse", chunk) == [
        "choices/0/delta/reasoning_content: null where the spec declares no nullable field"
    ]
    chunk["choices"][0]["delta"]["reasoning_content"] = "thinking"
    assert openapi_errors("CreateChatCompletionStreamResponse", chunk) == []


def test_nullable_fields_accept_null():
    chunk = json.loads(json.dumps(CHUNK))
    chunk["choices"][0]["logprobs"] = None  # `nullable: true` in the spec
    chunk["usage"] = None  # `anyOf: [CompletionUsage, null]`
    assert openapi_errors("CreateChatCompletionStreamResponse", chunk) == []


def test_error_param_and_code_are_nullable_but_required():
    error = {"error": {"message": "m", "type": "invalid_request", "param": None, "code": None}}
    assert openapi_errors("ErrorResponse", error) == []
    del error["error"]["param"]
    assert openapi_errors("ErrorResponse", error) == ["error: 'param' is a required property"]


def test_responses_schemas_load_and_judge_an_event():
    response = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "in_progress",
        "model": "kimi",
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1,
        "top_p": 1,
        "tool_choice": "auto",
        "tools": [],
    }
    event = {"type": "response.created", "sequence_number": 0, "response": response}
    assert schema_errors("openai.responses.event", event) == []
    assert schema_errors("openai.responses.response", response) == []
    assert openapi_errors("ResponseCreatedEvent", event) == []
    assert schema_errors("openai.responses.event", {**event, "sequence_number": None})
    assert openapi_errors("ResponseCreatedEvent", {**event, "sequence_number": None})


# --- every golden exchange, through the translator ---------------------------------------------

GOLDEN = [(d, name) for d in ("legacy", "connect") for name in list_scenarios(d)]


@pytest.mark.parametrize(("dialect", "name"), GOLDEN)
def test_every_golden_exchange_follows_the_spec(dialect, name):
    """Every chunk, the folded completion and the error of each recorded exchange, checked
    against openapi-subset.json itself (a wider sample than the e2e test can afford)."""
    scenario = load_scenario(name, dialect)
    # the Connect folders name no translator parameters: test_golden_connect's
    defaults = {"completion_id": None, "model": "kimi-k2", "created": 1_700_000_000}
    scenario = dataclasses.replace(scenario, meta={**defaults, "silent": True, **scenario.meta})
    result = replay(scenario, LegacyDecoder if dialect == "legacy" else ConnectDecoder)
    for chunk in result["chunks"]:
        assert_openapi_valid("CreateChatCompletionStreamResponse", chunk)
    finished = any(c["finish_reason"] for chunk in result["chunks"] for c in chunk["choices"])
    if finished:
        completion = fold_completion(result["chunks"], prompt_text="prompt")
        assert_openapi_valid("CreateChatCompletionResponse", completion)
    if result["raised"] is not None:
        assert_openapi_valid("ErrorResponse", result["raised"].to_openai())
    assert finished or result["raised"] is not None
    if scenario.request is not None:
        assert_openapi_valid("CreateChatCompletionRequest", scenario.request)
