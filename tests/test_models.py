"""Model names → Kimi flags (the table in translator/chat/_models.py), and the /v1/models body."""

from __future__ import annotations

import dataclasses

import pytest

from tests.schema_check import assert_valid
from translator._errors import LocalProtocolError
from translator._plan import ModelFlags
from translator.chat._models import (
    K1_AGENT_ID,
    MODEL_CATALOG,
    MODEL_NAME,
    MODEL_TABLE,
    model_list,
    resolve_model,
)

DEFAULT = ModelFlags()


def flags(**changes):
    return dataclasses.replace(DEFAULT, **changes)


MODEL_EXAMPLES = [
    # legacy dialect
    ("kimi", flags()),
    ("gpt-4o", flags()),
    ("", flags()),
    ("kimi-search", flags(use_search=True)),
    ("Kimi-Search", flags(use_search=True)),
    ("kimi-research", flags(use_search=True, use_research=True)),
    ("kimi-math", flags(use_math=True)),
    ("kimi-k1", flags(kimiplus_id=K1_AGENT_ID)),
    ("kimi-k1-search", flags(kimiplus_id=K1_AGENT_ID, use_search=True)),
    ("kimi-k1.5", flags(kimiplus_id="kimi", model="k1.5")),
    ("kimi-silent", flags(silent=True)),
    ("kimi-search-silent", flags(use_search=True, silent=True)),
    ("kimi-math-search-silent", flags(use_search=True, use_math=True, silent=True)),
    ("kimi-research-silent", flags(use_search=True, use_research=True, silent=True)),
    # a bare Kimi+ agent id is the agent
    ("0123456789abcdefghij", flags(kimiplus_id="0123456789abcdefghij")),
    ("0123456789ABCDEFGHIJ", flags()),
    ("0123456789abcdefghi", flags()),
    ("0123456789abcdefghijk", flags()),
    ("abcdefghijk1search00", flags(kimiplus_id="abcdefghijk1search00", use_search=True)),
    # connect dialect
    ("kimi-k2", flags(scenario="SCENARIO_K2")),
    ("kimi-k2.5", flags(scenario="SCENARIO_K2D5")),
    ("kimi-k2.6", flags(scenario="SCENARIO_K2D6")),
    ("kimi-k2-thinking", flags(scenario="SCENARIO_K2_THINKING", thinking=True)),
    ("kimi-k2.5-thinking", flags(scenario="SCENARIO_K2D5", thinking=True)),
    ("kimi-k2.6-search", flags(scenario="SCENARIO_K2D6", use_search=True)),
    ("kimi-k2.6-search-thinking", flags(scenario="SCENARIO_K2D6", use_search=True, thinking=True)),
    ("kimi-thinking", flags(thinking=True)),
    (
        "kimi-ok-computer",
        flags(scenario="SCENARIO_OK_COMPUTER", kimiplus_id="ok-computer", agent_mode="TYPE_NORMAL"),
    ),
    (
        "kimi-ok-computer-ultra",
        flags(scenario="SCENARIO_OK_COMPUTER", kimiplus_id="ok-computer", agent_mode="TYPE_ULTRA"),
    ),
]


@pytest.mark.parametrize(("name", "expected"), MODEL_EXAMPLES)
def test_model_names(name, expected):
    assert resolve_model(name) == expected


def test_the_default_scenario_is_k2d5():
    assert resolve_model("kimi").scenario == "SCENARIO_K2D5"
    assert resolve_model("kimi").kimiplus_id == "kimi"


@pytest.mark.parametrize("name", ["kimi", "kimi-k1", "kimi-search", "kimi-k2.6"])
def test_use_search_field_turns_search_on(name):
    assert resolve_model(name, use_search=True) == dataclasses.replace(
        resolve_model(name), use_search=True
    )
    assert resolve_model(name, use_search=False) == resolve_model(name)


@pytest.mark.parametrize(
    ("name", "effort", "thinking"),
    [
        ("kimi", None, False),
        ("kimi", "low", True),
        ("kimi", "medium", True),
        ("kimi", "high", True),
        ("kimi", "xhigh", True),
        ("kimi", "max", True),
        ("kimi", "none", False),
        ("kimi", "minimal", False),
        ("kimi-k2-thinking", None, True),
        ("kimi-k2-thinking", "none", False),
        ("kimi-k2-thinking", "minimal", False),
        ("kimi-k2.6", "high", True),
    ],
)
def test_reasoning_effort_sets_thinking(name, effort, thinking):
    resolved = resolve_model(name, reasoning_effort=effort)
    assert resolved.thinking is thinking
    # the effort changes only the thinking flag
    assert dataclasses.replace(resolved, thinking=False) == dataclasses.replace(
        resolve_model(name), thinking=False
    )


def test_unknown_reasoning_effort_is_refused():
    with pytest.raises(LocalProtocolError) as info:
        resolve_model("kimi", reasoning_effort="extreme")
    assert info.value.param == "reasoning_effort"
    assert info.value.code == "invalid_value"
    assert info.value.status == 400


def test_table_is_data_and_rules_are_ordered():
    kinds = {rule.kind for rule in MODEL_TABLE}
    assert kinds == {"exact", "prefix", "contains", "pattern"}
    fields = {f.name for f in dataclasses.fields(ModelFlags)}
    for rule in MODEL_TABLE:
        assert set(rule.changes) <= fields, rule
    # the agent-id rule copies the name itself
    assert any(MODEL_NAME in rule.changes.values() for rule in MODEL_TABLE)
    assert repr(MODEL_NAME) == "MODEL_NAME"
    # more specific Connect rules come after the general one they refine
    prefixes = [rule.match for rule in MODEL_TABLE if rule.kind == "prefix"]
    assert prefixes.index("kimi-k2") < prefixes.index("kimi-k2-thinking")


def test_catalog_names_resolve_as_described():
    ids = [model_id for model_id, _ in MODEL_CATALOG]
    assert len(ids) == len(set(ids))
    for required in (
        "kimi",
        "kimi-search",
        "kimi-research",
        "kimi-math",
        "kimi-k1",
        "kimi-search-silent",
        "kimi-k2.5",
        "kimi-k2.6",
        "kimi-k2-thinking",
        "kimi-ok-computer",
    ):
        assert required in ids
    for model_id, description in MODEL_CATALOG:
        assert description
        assert isinstance(resolve_model(model_id), ModelFlags)
    assert resolve_model("kimi-k1").kimiplus_id == K1_AGENT_ID


def test_model_list_body():
    body = model_list(1700000000)
    assert_valid("openai.models", body)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [model_id for model_id, _ in MODEL_CATALOG]
    for entry in body["data"]:
        assert entry["object"] == "model"
        assert entry["created"] == 1700000000
        assert entry["owned_by"] == "kimi-free-api"
        assert isinstance(entry["description"], str)
