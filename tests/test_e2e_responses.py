"""End to end for the Responses API face: the openai SDK (`responses.create`, `responses.stream`,
`retrieve`, `delete`) → a real mitmproxy with our addon → the fake Kimi, in both dialects.

Every body and event the client got is validated against schemas/openai/responses-*.json;
assertions are also on what the fake upstream recorded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest

from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from tests.test_e2e_codex import CONFIG as CODEX_CONFIG
from tests.test_e2e_dialects import (
    TOKEN,
    sdk,
    stream_calls,
    texts,
    used_conversations,
    wait_for,
)
from translator import fold_response

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
async def proxy(fake, dialect, tmp_path):
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect=dialect) as p:
        yield p


def valid_response(response: Any) -> dict[str, Any]:
    body = response if isinstance(response, dict) else response.to_dict(warnings=False)
    assert_valid("openai.responses.response", body)
    return body


def valid_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in events:
        assert_valid("openai.responses.event", event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


async def raw_events(proxy, body: dict[str, Any], token: str = TOKEN) -> list[dict[str, Any]]:
    """POST a streamed response with httpx: every event, checked against its `event:` line."""
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST",
            proxy.url + "/v1/responses",
            json={**body, "stream": True},
            headers={"authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        names: list[str] = []
        events: list[dict[str, Any]] = []
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                names.append(line[7:])
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert names == [e["type"] for e in events]
    return valid_events(events)


async def test_create_stream_and_whole(fake, dialect, proxy):
    async with sdk(proxy) as client:
        whole = await client.responses.create(model="kimi", input="whole please")
        async with client.responses.stream(model="kimi", input="streamed please") as stream:
            events = [e.to_dict(warnings=False) async for e in stream]
            final = await stream.get_final_response()
    body = valid_response(whole)
    assert body["status"] == "completed"
    assert whole.output_text == "Echo: whole please"
    assert body["usage"]["output_tokens"] > 0
    valid_events(events)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "Echo: streamed please" == final.output_text
    assert len(stream_calls(fake, dialect)) == 2


async def test_raw_stream_names_every_event(fake, dialect, proxy):
    events = await raw_events(proxy, {"model": "kimi", "input": "raw bytes"})
    completed = events[-1]["response"]
    assert completed["output"][0]["content"][0]["text"] == "Echo: raw bytes"


async def test_previous_response_id_continues_the_conversation(fake, dialect, proxy):
    async with sdk(proxy) as client:
        first = await client.responses.create(model="kimi", input="turn one")
        second = await client.responses.create(
            model="kimi", input="turn two", previous_response_id=first.id
        )
        async with client.responses.stream(
            model="kimi", input="turn three", previous_response_id=second.id
        ) as stream:
            third = await stream.get_final_response()
    for response in (first, second, third):
        valid_response(response)
    assert second.previous_response_id == first.id
    # Only the new input reached Kimi, into the one conversation.
    assert third.output_text == "Echo: turn three"
    used = used_conversations(fake)
    assert len(used) == 1
    assert texts(used[0]) == ["turn one", "turn two", "turn three"]


async def test_branching_from_an_earlier_response_replays_its_history(fake, dialect, proxy):
    async with sdk(proxy) as client:
        first = await client.responses.create(model="kimi", input="turn one")
        await client.responses.create(model="kimi", input="turn two", previous_response_id=first.id)
        branch = await client.responses.create(
            model="kimi", input="other turn", previous_response_id=first.id
        )
        after = await client.responses.create(
            model="kimi", input="branch goes on", previous_response_id=branch.id
        )
        again = await client.responses.create(
            model="kimi", input="branch of the branch", previous_response_id=branch.id
        )
    for response in (branch, after, again):
        valid_response(response)
    assert branch.previous_response_id == first.id
    original, branched, twice = used_conversations(fake)
    assert texts(original) == ["turn one", "turn two"]
    # The branch is a new Kimi chat holding the history up to `first`, never "turn two".
    replay = texts(branched)[0]
    assert "user:turn one" in replay
    assert "assistant:Echo: turn one" in replay
    assert replay.endswith("user:other turn")
    assert "turn two" not in replay
    assert texts(branched)[1:] == ["branch goes on"]
    assert after.output_text == "Echo: branch goes on"
    # A branch of the branch replays the whole line: turn one, other turn.
    line = texts(twice)[0]
    assert line.index("turn one") < line.index("other turn") < line.index("branch of the branch")
    assert "branch goes on" not in line


async def test_unknown_previous_response_id_is_a_404(fake, dialect, proxy):
    async with sdk(proxy) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.create(
                model="kimi", input="hello", previous_response_id="resp_nope"
            )
    body = caught.value.body
    assert caught.value.status_code == 404
    assert_valid("openai.error", {"error": body})
    assert body["param"] == "previous_response_id"
    assert not stream_calls(fake, dialect)


async def test_get_and_delete(fake, dialect, proxy):
    async with sdk(proxy) as client:
        created = await client.responses.create(model="kimi", input="keep me")
        got = await client.responses.retrieve(created.id)
        assert valid_response(got) == valid_response(created)
        await client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(
                model="kimi", input="again", previous_response_id=created.id
            )
    conversation = used_conversations(fake)[0]
    await wait_for(lambda: conversation.deleted_at is not None)


async def test_another_client_cannot_see_a_response(fake, dialect, proxy):
    async with sdk(proxy) as client:
        created = await client.responses.create(model="kimi", input="mine")
    async with sdk(proxy, token="refresh-bob") as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(created.id)


async def test_store_false_is_not_kept(fake, dialect, proxy):
    async with sdk(proxy) as client:
        created = await client.responses.create(model="kimi", input="forget me", store=False)
        assert valid_response(created)["store"] is False
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)


async def test_instructions_and_history_items(fake, dialect, proxy):
    async with sdk(proxy) as client:
        result = await client.responses.create(
            model="kimi",
            instructions="be brief",
            input=[
                {"role": "user", "content": "first question"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "first answer"}],
                },
                {"role": "user", "content": [{"type": "input_text", "text": "second question"}]},
            ],
        )
    valid_response(result)
    assert result.instructions == "be brief"
    sent = texts(used_conversations(fake)[0])[0]
    assert "system:be brief" in sent
    assert "assistant:first answer" in sent
    assert sent.endswith("user:second question")


async def test_bad_input_names_the_responses_field(fake, dialect, proxy):
    async with sdk(proxy) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model="kimi",
                input=[
                    {"role": "user", "content": "look"},
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "image_url": "ftp://x/y.png"}],
                    },
                ],
            )
    body = caught.value.body
    assert_valid("openai.error", {"error": body})
    assert body["param"] == "input[1].content[0].image_url"
    assert body["message"].startswith("input[1].content[0].image_url:")
    assert not stream_calls(fake, dialect)


# --- tools and structured output --------------------------------------------------------------

READ_TOOL = {
    "type": "function",
    "name": "exec_command",
    "description": "Run a shell command",
    "parameters": {
        "type": "object",
        "properties": {"cmd": {"type": "string"}},
        "required": ["cmd"],
    },
    "strict": False,
}


async def test_tool_call_round_trip_by_previous_response_id(fake, dialect, proxy):
    async with sdk(proxy) as client:
        asked = await client.responses.create(
            model="kimi", input="Please read the file notes.txt", tools=[READ_TOOL]
        )
        body = valid_response(asked)
        calls = [item for item in body["output"] if item["type"] == "function_call"]
        assert len(calls) == 1
        assert calls[0]["name"] == "exec_command"
        assert json.loads(calls[0]["arguments"]) == {"cmd": "cat notes.txt"}
        async with client.responses.stream(
            model="kimi",
            previous_response_id=asked.id,
            tools=[READ_TOOL],
            input=[
                {
                    "type": "function_call_output",
                    "call_id": calls[0]["call_id"],
                    "output": "hello from the notes",
                }
            ],
        ) as stream:
            events = [e.to_dict(warnings=False) async for e in stream]
            answered = await stream.get_final_response()
    valid_events(events)
    assert answered.output_text == "The file says: hello from the notes"
    (conversation,) = used_conversations(fake)
    assert len(conversation.messages) == 2
    assert "hello from the notes" in conversation.messages[1].text
    assert "Please read the file" not in conversation.messages[1].text


async def test_streamed_tool_call_events(fake, dialect, proxy):
    events = await raw_events(
        proxy, {"model": "kimi", "input": "read the file a.txt", "tools": [READ_TOOL]}
    )
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [json.loads(e["arguments"]) for e in done] == [{"cmd": "cat a.txt"}]
    assert events[-1]["response"]["status"] == "completed"


async def test_tool_round_trip_with_the_whole_history_and_store_false(fake, dialect, proxy):
    # Codex's way: nothing stored, every turn sends the whole history.
    history: list[dict[str, Any]] = [{"role": "user", "content": "read the file b.txt"}]
    async with sdk(proxy) as client:
        asked = await client.responses.create(
            model="kimi", input=history, tools=[READ_TOOL], store=False
        )
        (call,) = [i for i in valid_response(asked)["output"] if i["type"] == "function_call"]
        history += [
            {k: call[k] for k in ("type", "call_id", "name", "arguments")},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "bee"},
        ]
        answered = await client.responses.create(
            model="kimi", input=history, tools=[READ_TOOL], store=False
        )
    valid_response(answered)
    assert answered.output_text == "The file says: bee"
    # Automatic continuation by history: one conversation, only the new turn posted.
    (conversation,) = used_conversations(fake)
    assert len(conversation.messages) == 2


async def test_structured_output(fake, dialect, proxy):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    text = {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}}
    async with sdk(proxy) as client:
        whole = await client.responses.create(model="kimi", input="A city?", text=text)
        async with client.responses.stream(model="kimi", input="Another?", text=text) as stream:
            streamed = await stream.get_final_response()
    for response in (whole, streamed):
        body = valid_response(response)
        assert body["text"]["format"]["type"] == "json_schema"
        parsed = json.loads(response.output_text)
        assert set(parsed) == {"city", "population"}
        assert isinstance(parsed["population"], int)


# --- the README's section ----------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("## OpenAI Responses API and Codex CLI", 1)[1].split("\n## ", 1)[0]


async def test_readme_example_runs(fake, dialect, proxy):
    code = re.search(r"```python\n(.*?)```", readme_section(), re.DOTALL)
    assert code is not None
    source = code.group(1).replace("http://127.0.0.1:8000", proxy.url)
    source = source.replace("<your Kimi refresh_token>", TOKEN)
    output = io.StringIO()

    def run() -> None:
        with contextlib.redirect_stdout(output):
            exec(compile(source, str(README), "exec"), {})

    await asyncio.to_thread(run)
    printed = output.getvalue()
    assert printed.startswith("Echo: system:Answer in one sentence.")
    assert "user:What is the capital of France?" in printed
    assert printed.endswith("\nEcho: And of Italy?\n")
    (conversation,) = used_conversations(fake)
    assert texts(conversation)[1] == "And of Italy?"
    await wait_for(lambda: conversation.deleted_at is not None)


def test_readme_codex_config_is_the_tested_one():
    toml = re.search(r"```toml\n(.*?)```", readme_section(), re.DOTALL)
    assert toml is not None
    assert toml.group(1) == CODEX_CONFIG.format(base_url="http://127.0.0.1:8000")


# --- reasoning, files, failures ------------------------------------------------------------------


async def test_reasoning_effort_gives_a_reasoning_item(fake, dialect, proxy):
    model = "kimi-k1" if dialect == "legacy" else "kimi"
    async with sdk(proxy) as client:
        whole = await client.responses.create(
            model=model, input="think hard", reasoning={"effort": "high"}
        )
    events = await raw_events(
        proxy, {"model": model, "input": "think hard", "reasoning": {"effort": "high"}}
    )
    body = valid_response(whole)
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning"
    thinking = {"type": "reasoning_text", "text": "Thinking about: think hard"}
    assert reasoning["content"] == [thinking]
    assert message["content"][0]["text"] == "Echo: think hard"
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    thought = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert thought == "Thinking about: think hard"
    assert fold_response(events) == events[-1]["response"]


async def test_input_file_and_image_are_uploaded(fake, dialect, proxy):
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    async with sdk(proxy) as client:
        result = await client.responses.create(
            model="kimi",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is in it?"},
                        {
                            "type": "input_file",
                            "filename": "notes.pdf",
                            "file_data": "data:application/pdf;base64,"
                            + base64.b64encode(pdf).decode(),
                        },
                    ],
                }
            ],
        )
    valid_response(result)
    assert result.output_text.endswith(f"[files: notes.pdf ({len(pdf)} bytes)]")
    assert pdf in fake.record.uploads.values()


async def test_kimi_refusal_before_the_answer_is_an_openai_error(fake, dialect, proxy):
    route = "completion" if dialect == "legacy" else "chat"
    fake.set_scenario(Scenario.of(Fault(kind="http_status", match=route, status=500)))
    async with sdk(proxy) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.responses.create(model="kimi", input="hello")
        with pytest.raises(openai.APIStatusError):
            async with client.responses.stream(model="kimi", input="hello") as stream:
                await stream.get_final_response()
    assert caught.value.status_code == 502
    assert_valid("openai.error", {"error": caught.value.body})
    await wait_for(lambda: all(c.deleted_at is not None for c in used_conversations(fake)))


async def test_a_cut_mid_answer_ends_with_response_failed(fake, dialect, proxy):
    route = "completion" if dialect == "legacy" else "chat"
    fake.set_scenario(Scenario.of(Fault(kind="cut", match=route, after_bytes=800)))
    events = await raw_events(proxy, {"model": "kimi", "input": "x" * 600})
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    partial = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert partial
    assert ("Echo: " + "x" * 600).startswith(partial)
    assert fold_response(events) == failed
    # Failed responses are not stored.
    async with sdk(proxy) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(failed["id"])
    await wait_for(lambda: all(c.deleted_at is not None for c in used_conversations(fake)))


async def test_failover_before_the_first_event_answers_from_the_next_account(tmp_path):
    fault = Fault(kind="http_status", match="completion", status=429, token="refresh-a")
    async with (
        FakeKimi(dialect_routes="legacy", scenario=Scenario.of(fault)) as fake,
        running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy,
    ):
        events = await raw_events(
            proxy, {"model": "kimi", "input": "fail over"}, token="refresh-a,refresh-b"
        )
        async with sdk(proxy, token="refresh-a,refresh-b") as client:
            whole = await client.responses.create(model="kimi", input="fail over whole")
    # One clean response each: the failed attempt left no event behind.
    assert [e["type"] for e in events].count("response.created") == 1
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Echo: fail over"
    assert valid_response(whole)["status"] == "completed"
    account_b = fake.account_for("refresh-b")
    assert account_b is not None
    served = [r for r in fake.record.calls("completion") if r.status == 200]
    assert [r.account_id for r in served] == [account_b.id] * 2


async def test_search_results_become_url_citations(fake, dialect, proxy):
    async with sdk(proxy) as client:
        whole = await client.responses.create(model="kimi-search", input="find it")
    events = await raw_events(proxy, {"model": "kimi-search", "input": "find it"})
    body = valid_response(whole)
    (message,) = body["output"]
    part = message["content"][0]
    assert len(part["annotations"]) == 2
    for note in part["annotations"]:
        assert note["type"] == "url_citation"
        assert note["url"].startswith("https://example.com/search/")
        # The span is the markdown link the answer text carries for it.
        assert part["text"][note["start_index"] : note["end_index"]].endswith(f"]({note['url']})")
    added = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert len(added) == 2
    assert fold_response(events)["output"][0]["content"][0] == part


async def test_a_store_failure_does_not_cost_the_answer(fake, dialect, proxy, monkeypatch):
    runtime = proxy.addon.runtime
    assert runtime is not None
    assert runtime.store is not None

    def broken(_stored) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(runtime.store, "save_response", broken)
    async with sdk(proxy) as client:
        answered = await client.responses.create(model="kimi", input="keep going")
        assert answered.output_text == "Echo: keep going"
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(answered.id)


async def test_raw_get_and_delete_bodies(fake, dialect, proxy):
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=proxy.url, headers=headers, timeout=30) as http:
        created = (await http.post("/v1/responses", json={"model": "kimi", "input": "hi"})).json()
        got = await http.get(f"/v1/responses/{created['id']}")
        assert got.status_code == 200
        assert valid_response(got.json()) == created
        deleted = await http.delete(f"/v1/responses/{created['id']}")
        assert deleted.status_code == 200
        assert_valid("openai.responses.deleted", deleted.json())
        assert deleted.json() == {"id": created["id"], "object": "response", "deleted": True}
        for gone in (
            await http.delete(f"/v1/responses/{created['id']}"),
            await http.get("/v1/responses/resp_never"),
        ):
            assert gone.status_code == 404
            assert_valid("openai.error", gone.json())
            assert gone.json()["error"]["code"] == "response_not_found"
        unauthenticated = await http.get(
            f"/v1/responses/{created['id']}", headers={"authorization": ""}
        )
        assert unauthenticated.status_code == 401
        assert_valid("openai.error", unauthenticated.json())


async def test_sdk_parse_with_a_pydantic_model(fake, dialect, proxy):
    class City(pydantic.BaseModel):
        name: str
        population: int

    async with sdk(proxy) as client:
        parsed = await client.responses.parse(model="kimi", input="A city?", text_format=City)
    valid_response(parsed)
    assert isinstance(parsed.output_parsed, City)
    assert parsed.text.format.type == "json_schema"
