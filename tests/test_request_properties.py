"""Properties of the request side, driven by the official schema and by our own.

1. Every request the official schema (schemas/openai/CreateChatCompletionRequest.json) allows is
   accepted by the hand validator, or refused on purpose: for what Kimi cannot do (code
   "unsupported_value"), or where we are stricter than the schema (STRICTER, each listed in
   schemas/openai/README.md). Generated from `projection` of the official schema, validated
   against the whole of it.
2. The hand validator and its contract, schemas/openai/accepted-chat-request.json, agree exactly
   on mutated requests: refused by the validator exactly when that schema refuses them (again up
   to the "unsupported_value" refusals).
3. `plan_chat` is total: a ChatPlan or a LocalProtocolError, never another exception.
4. The completion body built from any plan validates against schemas/kimi/completion-request.json.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import hypothesis.internal.conjecture.utils as _cu
import hypothesis_jsonschema._from_schema as _hjs
import pytest
from hypothesis import example, given, note, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from schemas import load_schema, schema_errors
from tests.schema_check import assert_valid
from tests.test_request import VALID
from translator._errors import LocalProtocolError
from translator._plan import ChatPlan, InlineFile
from translator.chat._request import plan_chat
from translator.chat._validate import _FIELDS, validate_request
from translator.legacy._calls import UploadedFile, completion_call, continuation_call


# hypothesis-jsonschema 0.23.1 drives Hypothesis's private `many` with `.more()`, which Hypothesis
# 6.170 replaced by a context manager + iterator; without this adapter `from_schema` fails on
# every object schema. The adapter is seen only by hypothesis-jsonschema. Remove it once a
# compatible hypothesis-jsonschema release is pinned.
class _ManyWithMore(_cu.many):
    def more(self) -> bool:
        if self._depth is None:
            self.__enter__()
            self._more_iter = iter(self)
        try:
            next(self._more_iter)
        except StopIteration:
            self.__exit__(None, None, None)
            return False
        return True


class _CompatUtils:
    many = _ManyWithMore

    def __getattr__(self, name: str) -> Any:
        return getattr(_cu, name)


if not hasattr(_cu.many, "more"):
    _hjs.cu = _CompatUtils()  # type: ignore[attr-defined,assignment]


def projection(schema: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """`schema` (the derived request schema) with only the top-level properties in `keep`.

    Hypothesis generates from this trimmed projection, and every generated request is then
    validated against the FULL official schema. Trimmed: the request fields our validator does
    not read (audio, prediction, web_search_options, prompt_cache_*, ...: it ignores them, so they
    cannot disagree) and the $defs only they reach. The top-level `allOf` of object schemas
    becomes one object (a property several parts define gets the `allOf` of their definitions):
    hypothesis-jsonschema cannot merge it once and would re-merge it on every draw. Objects are
    closed (`additionalProperties: false` where the spec leaves them open), lose the
    `prompt_cache_breakpoint` we do not read, and arrays hold at most 3 items: the projection
    generates fewer and smaller shapes, all still valid, many times faster (unknown fields are
    the mutation test's job). And a
    `oneOf` whose branches cannot both match (they differ in JSON type or in a required `type` /
    `role` value) becomes the equivalent `anyOf`, which hypothesis-jsonschema generates many times
    faster (for a `oneOf` it filters every draw against the other branches). The request schema
    has no recursion to cut (FunctionParameters is an open object).
    """
    out = copy.deepcopy(schema)
    defs = out["$defs"]
    top = _flattened(defs, out.pop("$ref"))
    top["properties"] = {k: v for k, v in top["properties"].items() if k in keep}
    out["$ref"] = "#/$defs/(projection)"
    defs["(projection)"] = top
    _disjoint_one_of_as_any_of(out, defs)
    _closed(out)
    reached: set[str] = set()
    todo = [out["$ref"]]
    while todo:
        name = todo.pop().removeprefix("#/$defs/")
        if name not in reached:
            reached.add(name)
            todo += _refs(defs[name])
    out["$defs"] = {name: defs[name] for name in defs if name in reached}
    return out


def _flattened(defs: dict[str, Any], ref: str) -> dict[str, Any]:
    """The object schema `ref` (an `allOf` of object schemas and $refs to them) as one object."""
    node = defs[ref.removeprefix("#/$defs/")]
    parts = [_flattened(defs, p["$ref"]) if "$ref" in p else p for p in node.get("allOf", [node])]
    assert all(set(part) <= {"type", "properties", "required"} for part in parts), parts
    properties: dict[str, list[Any]] = {}
    for part in parts:
        for name, prop in part.get("properties", {}).items():
            if prop not in properties.setdefault(name, []):
                properties[name].append(prop)
    return {
        "type": "object",
        "properties": {k: v[0] if len(v) == 1 else {"allOf": v} for k, v in properties.items()},
        "required": sorted({name for part in parts for name in part.get("required", ())}),
    }


def _closed(node: Any) -> None:
    if isinstance(node, list):
        for value in node:
            _closed(value)
    elif isinstance(node, dict):
        if "properties" in node:
            node.setdefault("additionalProperties", False)
            node["properties"].pop("prompt_cache_breakpoint", None)
        if node.get("type") == "array" or "items" in node:
            node["maxItems"] = min(node.get("maxItems", 3), 3)
        for value in node.values():
            _closed(value)


def _disjoint_one_of_as_any_of(node: Any, defs: dict[str, Any]) -> None:
    if isinstance(node, list):
        for value in node:
            _disjoint_one_of_as_any_of(value, defs)
    elif isinstance(node, dict):
        for value in node.values():
            _disjoint_one_of_as_any_of(value, defs)
        branches = node.get("oneOf")
        if branches and all(
            _disjoint(a, b, defs) for i, a in enumerate(branches) for b in branches[i + 1 :]
        ):
            node["anyOf"] = node.pop("oneOf")


def _disjoint(a: dict[str, Any], b: dict[str, Any], defs: dict[str, Any]) -> bool:
    """True when no instance can match both `a` and `b`."""
    a, b = (defs[s["$ref"].removeprefix("#/$defs/")] if "$ref" in s else s for s in (a, b))
    types_a, types_b = ({s["type"]} if isinstance(s.get("type"), str) else None for s in (a, b))
    if types_a and types_b and not types_a & types_b:
        return True
    tags_a, tags_b = (
        {
            name: set(prop["enum"])
            for name, prop in s.get("properties", {}).items()
            if name in s.get("required", ()) and "enum" in prop
        }
        for s in (a, b)
    )
    return any(not tags_a[name] & tags_b[name] for name in tags_a.keys() & tags_b.keys())


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


#: the top-level fields the hand validator reads (translator/chat/_validate.py)
READ = {"model", "messages", *_FIELDS}
REQUESTS = from_schema(projection(load_schema("openai.request"), READ))
ACCEPTED = from_schema(load_schema("openai.request.accepted"))
CONV = "cq1p2n3d4e5f6g7h8i9j"
SEMANTIC = "unsupported_value"


#: values that are data, not request fields: a null inside them is a value, not an absent field
OPAQUE = frozenset({"metadata", "logit_bias", "parameters", "schema"})


def without_nulls(node: Any, key: str = "") -> Any:
    """`node` with null-valued fields dropped: OpenAI (and our validator) treat null as absent
    for an optional field, which the schema does not say everywhere. `content` keeps its null
    (it is nullable where it may be null, and required-or-refused elsewhere)."""
    if key in OPAQUE:
        return node
    if isinstance(node, dict):
        return {
            k: without_nulls(v, k) for k, v in node.items() if v is not None or k == "content"
        }
    if isinstance(node, list):
        return [without_nulls(v) for v in node]
    return node


def schema_verdict(request: Any) -> bool:
    """True when the schema accepts `request` as OpenAI reads it: nulls as absent, and the
    token limits at least 1 (OpenAI checks that beyond its schema)."""
    accepted = not schema_errors("openai.request.accepted", without_nulls(request))
    return accepted and not below_minimum(request)


def below_minimum(request: Any) -> bool:
    """A token limit below 1, which OpenAI refuses although its schema does not say so."""
    if not isinstance(request, dict):
        return False
    values = (request.get(f) for f in ("max_tokens", "max_completion_tokens"))
    return any(isinstance(v, int | float) and not isinstance(v, bool) and v < 1 for v in values)


#: the verdict for a refusal where we are stricter than the official schema on purpose (each is
#: listed in schemas/openai/README.md)
STRICTER = "stricter_than_the_spec"


def _stricter(request: Any, error: LocalProtocolError) -> bool:
    param = re.sub(r"\[\d+\]", "[]", error.param or "")
    if (param, error.code) == ("model", "invalid_value"):
        return request.get("model") == ""  # an empty model name (OpenAI's server refuses it too)
    return error.code == "missing_required_field" and param in {
        # a file part with neither file_data nor file_id (the spec's File object requires none)
        "messages[].content[].file.file_data",
        # custom tools (`type: "custom"`) and the `allowed_tools` tool_choice: not supported yet,
        # refused as if `function` were missing
        "tools[].function",
        "messages[].tool_calls[].function",
        "tool_choice.function",
    }


def hand_verdict(request: Any) -> str | None:
    """None when the hand validator accepts, else the error code (or STRICTER)."""
    try:
        validate_request(request)
    except LocalProtocolError as error:
        return STRICTER if _stricter(request, error) else error.code or "?"
    return None


def check_plan(request: Any) -> None:
    try:
        plan = plan_chat(request)
    except LocalProtocolError as error:
        note(f"refused: {error!r}")
        return
    assert isinstance(plan, ChatPlan)
    refs = [
        UploadedFile(
            id=f"file{i:016d}",
            name=f.name if isinstance(f, InlineFile) else f"url-{i}",
            size=len(f.data) if isinstance(f, InlineFile) else 0,
            kind=f.kind_hint,
        )
        for i, f in enumerate(plan.files)
    ]
    assert_valid(
        "kimi.completion_request",
        completion_call(CONV, prompt=plan.prompt, flags=plan.flags, refs=refs).json,
    )
    assert_valid("kimi.completion_request", continuation_call(CONV, "seg", plan.flags).json)


# Drawing from the official schema costs hypothesis-jsonschema about a second per example on a
# busy 2-core machine (nearly all of the test's time; it re-merges subschemas on every draw): a
# third of the profile's examples, and more than the default 120 s.
@pytest.mark.timeout(300)
@settings(max_examples=max(10, settings.default.max_examples // 3))
@given(REQUESTS)
@example({"model": "kimi", "messages": [{"role": "user", "content": ""}], "n": 2})
def test_schema_valid_requests_are_accepted_or_refused_on_purpose(request):
    assert not schema_errors("openai.request", request)
    verdict = hand_verdict(request)
    if below_minimum(request):
        # Refused; when the request also asks for something Kimi cannot do (n > 1, audio),
        # either refusal is on purpose: the validator reports the first field it checks.
        assert verdict in ("invalid_value", SEMANTIC), verdict
    else:
        assert verdict in (None, SEMANTIC, STRICTER), verdict
    check_plan(request)


# --- mutations ----------------------------------------------------------------------------------

KEYS = [
    "model", "messages", "role", "content", "type", "text", "image_url", "url", "detail",
    "file_url", "file", "file_data", "file_id", "filename", "input_audio", "refusal",
    "tool_calls", "tool_call_id", "function", "function_call", "name", "arguments", "id",
    "n", "stream", "stream_options", "include_usage", "stop", "temperature", "tool_choice",
    "response_format", "reasoning_effort", "conversation_id", "use_search", "logit_bias",
]  # fmt: skip
WORDS = [
    "text", "image_url", "file", "input_audio", "refusal", "user", "assistant", "system",
    "tool", "developer", "function", "auto", "none", "low", "high", "json_object",
    "https://a.com/x.png", "data:image/png;base64,iVBORw0KGgo=", "ftp://x", CONV, "../x",
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 200)
    | st.floats(-5, 5)
    | st.text(max_size=5)
    | st.sampled_from(WORDS),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def mutate(draw, node):
    """`node` with one change somewhere inside it."""
    if isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node)))
        new = dict(node)
        op = draw(st.sampled_from(["descend", "descend", "delete", "replace", "add"]))
        if op == "descend":
            new[key] = mutate(draw, node[key])
        elif op == "delete":
            del new[key]
        elif op == "replace":
            new[key] = draw(json_values)
        else:
            new[draw(st.sampled_from(KEYS))] = draw(json_values)
        return new
    if isinstance(node, list) and node and draw(st.booleans()):
        i = draw(st.integers(0, len(node) - 1))
        new_list = list(node)
        op = draw(st.sampled_from(["descend", "descend", "delete", "replace", "append"]))
        if op == "descend":
            new_list[i] = mutate(draw, node[i])
        elif op == "delete":
            del new_list[i]
        elif op == "replace":
            new_list[i] = draw(json_values)
        else:
            new_list.append(draw(json_values))
        return new_list
    return draw(json_values)


@st.composite
def mutated_requests(draw):
    base = draw(st.sampled_from(VALID) | ACCEPTED)
    return mutate(draw, base)


@given(mutated_requests())
@example({"model": "kimi", "messages": [{"role": "user", "content": [{"type": "file"}]}]})
@example({"model": "kimi", "messages": [{"role": "assistant"}], "stop": [1.5]})
@example({"model": "kimi", "messages": [{"role": "user", "content": "x"}], "n": 1.0})
@example({"model": "kimi", "messages": [{"role": "user", "content": "x"}], "user": None})
@example({"model": "kimi", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
def test_mutated_requests_agree_with_the_schema(request):
    schema_ok = schema_verdict(request)
    verdict = hand_verdict(request)
    note(f"schema_ok={schema_ok} verdict={verdict}")
    if schema_ok:
        assert verdict in (None, SEMANTIC)
    else:
        assert verdict is not None
    check_plan(request)
