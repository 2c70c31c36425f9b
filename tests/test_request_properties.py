"""Properties of the request side, driven by schemas/openai/chat-completion-request.json.

1. The hand validator and the schema agree: a schema-valid request is accepted, or refused on
   purpose for what Kimi cannot do (code "unsupported_value"); a mutated request is refused by
   the validator exactly when the schema refuses it (again up to those refusals).
2. `plan_chat` is total: a ChatPlan or a LocalProtocolError, never another exception.
3. The completion body built from any plan validates against schemas/kimi/completion-request.json.
"""

from __future__ import annotations

from typing import Any

import hypothesis.internal.conjecture.utils as _cu
import hypothesis_jsonschema._from_schema as _hjs
from hypothesis import example, given, note
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from schemas import load_schema, schema_errors
from tests.schema_check import assert_valid
from tests.test_request import VALID
from translator._errors import LocalProtocolError
from translator._legacy_calls import UploadedFile, completion_call, continuation_call
from translator._plan import ChatPlan, InlineFile
from translator._request import plan_chat
from translator._validate import validate_request


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

REQUESTS = from_schema(load_schema("openai.request"))
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
    return not schema_errors("openai.request", without_nulls(request)) and not below_minimum(
        request
    )


def below_minimum(request: Any) -> bool:
    """A token limit below 1, which OpenAI refuses although its schema does not say so."""
    if not isinstance(request, dict):
        return False
    values = (request.get(f) for f in ("max_tokens", "max_completion_tokens"))
    return any(isinstance(v, int | float) and not isinstance(v, bool) and v < 1 for v in values)


def hand_verdict(request: Any) -> str | None:
    """None when the hand validator accepts, else the error code."""
    try:
        validate_request(request)
    except LocalProtocolError as error:
        return error.code or "?"
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


@given(REQUESTS)
@example({"model": "kimi", "messages": [{"role": "user", "content": ""}], "n": 2})
def test_schema_valid_requests_are_accepted_or_refused_on_purpose(request):
    assert not schema_errors("openai.request", request)
    verdict = hand_verdict(request)
    if below_minimum(request):
        assert verdict == "invalid_value"
    else:
        assert verdict in (None, SEMANTIC), verdict
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
    base = draw(st.sampled_from(VALID) | REQUESTS)
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
