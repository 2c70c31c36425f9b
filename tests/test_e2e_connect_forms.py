"""Every form of Connect reasoning and search results the fake can send reaches the client the
same way: reasoning as `reasoning_content`, never `content`; search results as the numbered list
and `url_citation` annotations."""

from __future__ import annotations

import pytest

from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from tests.test_e2e_dialects import sdk, user

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.mark.parametrize(("thinking", "search"), [("flags", "tool"), ("stage", "refs")])
async def test_reasoning_and_search_forms_reach_the_client(thinking, search, tmp_path):
    async with (
        FakeKimi(
            dialect_routes="connect", connect_thinking=thinking, connect_search=search
        ) as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="connect", precreate_conversations=0
        ) as proxy,
        sdk(proxy) as client,
    ):
        stream = await client.chat.completions.create(
            model="kimi-k2-thinking-search", stream=True, messages=[user("why")]
        )
        content = reasoning = ""
        annotations = []
        async for chunk in stream:
            assert_valid("openai.chunk", chunk.to_dict())
            delta = chunk.to_dict()["choices"][0]["delta"] if chunk.choices else {}
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            annotations += delta.get("annotations") or []
    assert reasoning == "Thinking about: why"
    assert "Thinking about" not in content
    assert content.endswith("Echo: why")
    assert content.startswith("1. [Result 1 for why]")
    assert [a["url_citation"]["url"][:27] for a in annotations] == [
        "https://example.com/search/"
    ] * 2
