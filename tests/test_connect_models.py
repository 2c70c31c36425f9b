"""Kimi's model catalog (GetAvailableModels) → OpenAI model ids, and typed names → chat fields."""

from __future__ import annotations

import json

import pytest

from tests.schema_check import assert_valid
from translator import (
    AVAILABLE_MODELS_PATH,
    BUILTIN_CATALOG,
    ChatPlan,
    KimiModel,
    ModelCatalog,
    ModelFlags,
    RemoteProtocolError,
    available_models_call,
    catalog_changes,
    catalog_model_list,
    offered_models,
    read_model_catalog,
    resolve_model,
    with_catalog,
)
from translator.connect._calls import chat_call
from translator.connect._frames import EnvelopeDecoder

#: shaped like the public captures (research notes §B.7 / §B.9)
ANSWER = {
    "availableModels": [
        {
            "id": "k2d6-chat",
            "key": "k2d6",
            "scenario": "SCENARIO_K2D5",
            "displayName": "Instant",
            "description": "Fast answers",
            "reasoningEffortOptions": [
                {"effort": "REASONING_EFFORT_NONE", "displayName": "Standard"},
                {"effort": "REASONING_EFFORT_LOW", "displayName": "High"},
            ],
            "defaultReasoningEffort": "REASONING_EFFORT_LOW",
            "contextLengthOptions": [{"contextLength": "CONTEXT_LENGTH_L", "available": True}],
        },
        {
            "id": "k3-agent",
            "key": "k3",
            "scenario": "SCENARIO_OK_COMPUTER",
            "displayName": "K3",
            "kimiPlusId": "ok-computer",
            "agentMode": "TYPE_NORMAL",
            "reasoningEffortOptions": [{"effort": "REASONING_EFFORT_HIGH"}, {"effort": ""}],
        },
        {
            "id": "k3-agent-swarm",
            "key": "k3-agent-ultra",
            "scenario": "SCENARIO_OK_COMPUTER",
            "displayName": "K3 Swarm",
            "kimiPlusId": "ok-computer",
            "agentMode": "TYPE_ULTRA",
            "reasoningEffortOptions": [{"effort": "REASONING_EFFORT_MAX"}],
        },
        {"id": "k28-agent-preview", "scenario": "SCENARIO_OK_COMPUTER", "kimiPlusId": "../x"},
        {"id": "k3-agent", "scenario": "SCENARIO_DUPLICATE"},
        {"id": "bad id/", "scenario": "SCENARIO_K2D5"},
        {"id": "no-scenario"},
    ],
    "defaultScenario": {"scenario": "SCENARIO_K2D5", "model": "k2d6-chat"},
}


def catalog() -> ModelCatalog:
    return read_model_catalog(json.dumps(ANSWER).encode())


def test_the_call():
    call = available_models_call()
    assert (call.method, call.path, call.json) == ("POST", AVAILABLE_MODELS_PATH, {})
    assert dict(call.headers)["x-msh-version"] == "2.0.0"


def test_reading_the_catalog_skips_unusable_entries():
    read = catalog()
    assert [m.id for m in read.models] == [
        "k2d6-chat",
        "k3-agent",
        "k3-agent-swarm",
        "k28-agent-preview",
    ]
    assert read.default_model == "k2d6-chat"
    k3 = read.models[1]
    assert (k3.kimiplus_id, k3.agent_mode, k3.efforts) == (
        "ok-computer",
        "TYPE_NORMAL",
        ("REASONING_EFFORT_HIGH",),
    )
    # an unsafe agent id is dropped rather than sent
    assert read.models[3].kimiplus_id == ""


def test_openai_ids():
    names = [(o.name, o.thinking) for o in offered_models(catalog())]
    assert names == [
        ("kimi-k2.6", False),
        ("kimi-k2.6-thinking", True),
        ("kimi-k3", True),
        ("kimi-k3-agent-swarm", True),
        ("kimi-k28-agent-preview", False),
    ]
    body = catalog_model_list(catalog(), 1_700_000_000)
    assert_valid("openai.models", body)
    assert body["data"][0]["description"] == "Fast answers"
    assert body["data"][1]["description"] == "Fast answers (thinking)"
    assert body["data"][2]["description"] == "K3"
    assert body["data"][4]["description"] == "k28-agent-preview"


def test_duplicate_names_are_listed_once():
    twice = ModelCatalog(
        models=(KimiModel(id="k9-chat", scenario="S"), KimiModel(id="k9-agent", scenario="T"))
    )
    assert [o.name for o in offered_models(twice)] == ["kimi-k9"]


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("kimi-k2.6", {"scenario": "SCENARIO_K2D5", "model": "k2d6-chat"}),
        ("kimi-k2.6-thinking", {"scenario": "SCENARIO_K2D5", "model": "k2d6-chat"}),
        ("Kimi-K2.6-search-thinking", {"scenario": "SCENARIO_K2D5", "model": "k2d6-chat"}),
        (
            "kimi-k3",
            {
                "scenario": "SCENARIO_OK_COMPUTER",
                "model": "k3-agent",
                "kimiplus_id": "ok-computer",
                "agent_mode": "TYPE_NORMAL",
                "thinking": True,
            },
        ),
        (
            "kimi-k3-agent-swarm-silent",
            {
                "scenario": "SCENARIO_OK_COMPUTER",
                "model": "k3-agent-swarm",
                "kimiplus_id": "ok-computer",
                "agent_mode": "TYPE_ULTRA",
                "thinking": True,
            },
        ),
        (
            "kimi-k28-agent-preview",
            {"scenario": "SCENARIO_OK_COMPUTER", "model": "k28-agent-preview"},
        ),
        ("kimi", None),
        ("gpt-4o", None),
        ("kimi-k2", None),
    ],
)
def test_typed_names(name, changes):
    assert catalog_changes(name, catalog()) == changes


def test_with_catalog_keeps_the_suffix_flags_of_the_static_table():
    def plan_for(name: str) -> ChatPlan:
        return ChatPlan(model=name, flags=resolve_model(name), prompt="hi", files=(), messages=())

    plan = with_catalog(plan_for("kimi-k2.6-search-thinking"), BUILTIN_CATALOG)
    assert plan.flags == ModelFlags(
        use_search=True, thinking=True, scenario="SCENARIO_K2D5", model="k2d6-chat"
    )
    body = EnvelopeDecoder().feed(chat_call(plan).content or b"")[0].payload
    sent = json.loads(body)
    assert sent["options"] == {"thinking": True, "model": "k2d6-chat"}
    assert sent["tools"] == [{"type": "TOOL_TYPE_SEARCH", "search": {}}]
    swarm = with_catalog(plan_for("kimi-k3-agent-swarm"), BUILTIN_CATALOG)
    assert (swarm.flags.kimiplus_id, swarm.flags.agent_mode) == ("ok-computer", "TYPE_ULTRA")
    untouched = plan_for("gpt-4o")
    assert with_catalog(untouched, BUILTIN_CATALOG) is untouched


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[" * 100_000,
        b"[]",
        b'{"availableModels": {}}',
        b'{"availableModels": [1]}',
        b'{"availableModels": []}',
        b'{"availableModels": [{"id": "x"}]}',
        b'{"availableModels": [{"id": 1, "scenario": "S"}]}',
        b'{"availableModels": [{"id": "x", "scenario": "S", "reasoningEffortOptions": {}}]}',
        b'{"availableModels": [{"id": "x", "scenario": "S", "reasoningEffortOptions": [1]}]}',
        b'{"availableModels": [{"id": "x", "scenario": "S"}], "defaultScenario": 1}',
    ],
)
def test_bad_answers_raise(body):
    with pytest.raises(RemoteProtocolError):
        read_model_catalog(body)
