"""/v1/models and model names in the Connect dialect follow Kimi's own catalog
(GetAvailableModels), with the static list as the fallback."""

from __future__ import annotations

import httpx
import pytest

from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from tests.test_e2e_dialects import TOKEN, sdk, user
from translator import MODEL_CATALOG

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

OPTIONS = {"kimi_dialect": "connect", "precreate_conversations": 0}


async def models(proxy, token: str | None = TOKEN) -> list[str]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as http:
        resp = await http.get(proxy.url + "/v1/models", headers=headers)
    assert resp.status_code == 200
    assert_valid("openai.models", resp.json())
    return [m["id"] for m in resp.json()["data"]]


async def test_models_are_kimis_own_and_cached(tmp_path):
    async with (
        FakeKimi(dialect_routes="connect") as fake,
        running_proxy(fake.base_url, tmp_path, **OPTIONS) as proxy,
    ):
        listed = await models(proxy)
        assert listed == ["kimi-k2.6", "kimi-k2.6-thinking", "kimi-k3", "kimi-k3-agent-swarm"]
        assert await models(proxy) == listed
        calls = fake.record.calls("models")
        assert len(calls) == 1  # cached
        # the header without which the gateway serves an older model list
        assert calls[0].headers["x-msh-version"] == "2.0.0"
        # without credentials there is no account to ask with: the static list
        assert await models(proxy, None) == [name for name, _ in MODEL_CATALOG]


async def test_the_static_list_when_kimi_refuses(tmp_path):
    scenario = Scenario.of(Fault(kind="http_status", match="models", status=503))
    async with (
        FakeKimi(dialect_routes="connect", scenario=scenario) as fake,
        running_proxy(fake.base_url, tmp_path, **OPTIONS) as proxy,
    ):
        assert await models(proxy) == [name for name, _ in MODEL_CATALOG]
        assert await models(proxy) == [name for name, _ in MODEL_CATALOG]
        assert len(fake.record.calls("models")) == 1  # a failure is not re-asked at once


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (
            "kimi-k3",
            {
                "scenario": "SCENARIO_OK_COMPUTER",
                "kimiplus_id": "ok-computer",
                "agent_mode": "TYPE_NORMAL",
                "options": {"thinking": True, "model": "k3-agent"},
            },
        ),
        (
            "kimi-k3-agent-swarm",
            {"agent_mode": "TYPE_ULTRA", "options": {"thinking": True, "model": "k3-agent-swarm"}},
        ),
        (
            "kimi-k2.6-thinking",
            {"scenario": "SCENARIO_K2D5", "options": {"thinking": True, "model": "k2d6-chat"}},
        ),
        ("kimi-k2.6", {"options": {"thinking": False, "model": "k2d6-chat"}}),
    ],
)
async def test_typed_names_fill_the_chat_fields(model, fields, tmp_path):
    async with (
        FakeKimi(dialect_routes="connect") as fake,
        running_proxy(fake.base_url, tmp_path, **OPTIONS) as proxy,
        sdk(proxy) as client,
    ):
        answer = await client.chat.completions.create(model=model, messages=[user("hi")])
        assert answer.choices[0].message.content == "Echo: hi"
        [call] = fake.record.calls("chat")
        assert call.headers["x-msh-version"] == "2.0.0"
        assert {k: call.json[k] for k in fields} == fields
        # names the public record knows need no catalog call on the chat path
        assert fake.record.calls("models") == []


async def test_a_kimi_name_nobody_knows_asks_kimi_once_then_keeps_the_static_flags(tmp_path):
    async with (
        FakeKimi(dialect_routes="connect") as fake,
        running_proxy(fake.base_url, tmp_path, **OPTIONS) as proxy,
        sdk(proxy) as client,
    ):
        for _ in range(2):
            await client.chat.completions.create(model="kimi-k2-thinking", messages=[user("x")])
        assert len(fake.record.calls("models")) == 1
        first, second = fake.record.calls("chat")
        assert first.json["scenario"] == second.json["scenario"] == "SCENARIO_K2_THINKING"
        assert "model" not in first.json["options"]
