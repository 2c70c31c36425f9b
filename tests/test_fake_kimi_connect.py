"""The fake Kimi's Connect-RPC dialect (www.kimi.com), driven over loopback HTTP."""

from __future__ import annotations

import re

import httpx
import pytest

from fixtures.fake_kimi import (
    CONNECT_CHAT_PATH,
    FakeKimi,
    answer_for,
    encode_envelope,
    read_envelopes,
    read_jwt_payload,
)
from translator import ReasoningDelta, SearchResult, TextDelta
from translator.connect._stream import ConnectDecoder

UUID_SHAPE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-8000-[0-9a-f]{12}")
CONNECT_HEADERS = {"Content-Type": "application/connect+json", "connect-protocol-version": "1"}


async def login(client: httpx.AsyncClient, refresh: str = "rt-1") -> dict[str, str]:
    r = await client.get("/api/auth/token/refresh", headers={"Authorization": f"Bearer {refresh}"})
    assert r.status_code == 200
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def chat_body(prompt: str, *, chat_id: str = "", parent_id: str = "", **extra) -> dict:
    blocks = [{"message_id": "", "text": {"content": prompt}}]
    blocks += [{"file": {"id": f}} for f in extra.pop("files", [])]
    return {
        "scenario": "SCENARIO_K2D5",
        "chat_id": chat_id,
        "tools": extra.pop("tools", []),
        "message": {"parent_id": parent_id, "role": "user", "blocks": blocks},
        "options": {"thinking": extra.pop("thinking", False)},
        **extra,
    }


async def chat(client, auth, body) -> list[tuple[int, dict]]:
    r = await client.post(
        CONNECT_CHAT_PATH, content=encode_envelope(body), headers=CONNECT_HEADERS | auth
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/connect+json"
    return read_envelopes(r.content)


def answer_text(frames, kind: str = "text") -> str:
    return "".join(
        p["block"][kind]["content"]
        for _, p in frames
        if p.get("mask", "").startswith(f"block.{kind}")
    )


def end_of(frames) -> dict:
    flags, payload = frames[-1]
    assert flags == 0x02
    assert all(f == 0 for f, _ in frames[:-1])
    return payload


async def test_new_chat_frames_in_order():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        frames = await chat(c, auth, chat_body("Hello 世界"))
        payloads = [p for _, p in frames]
        assert end_of(frames) == {}
        chat_id = payloads[0]["chat"]["id"]
        # UUID-shaped and time-ordered, like 1a0a4ba7-0db2-835e-8000-09e4fa50aa86
        assert UUID_SHAPE.fullmatch(chat_id), chat_id
        user_id, assistant_id = payloads[1]["message"]["id"], payloads[3]["message"]["id"]
        assert UUID_SHAPE.fullmatch(user_id)
        assert UUID_SHAPE.fullmatch(assistant_id)
        assert chat_id < user_id < assistant_id
        assert payloads[1]["message"]["role"] == "user"
        assert payloads[3]["message"]["role"] == "assistant"
        assert payloads[3]["message"]["status"] == "MESSAGE_STATUS_GENERATING"
        first_text = next(p for p in payloads if p.get("mask") == "block.text")
        assert first_text["op"] == "set"
        assert first_text["block"]["text"] == {"content": ""}
        assert answer_text(frames) == "Echo: Hello 世界"
        assert payloads[-3]["message"]["status"] == "MESSAGE_STATUS_COMPLETED"
        assert payloads[-2] == {"done": {}}
        assert {"heartbeat": {}} in payloads
        conv = kimi.record.conversations[chat_id]
        assert conv.dialect == "connect"
        assert conv.messages[0].text == "Hello 世界"
        assert conv.segments == [payloads[3]["message"]["id"]]
        recorded = kimi.record.calls("chat")[0]
        assert recorded.json["message"]["blocks"][0]["text"]["content"] == "Hello 世界"


async def test_continue_a_chat_needs_the_last_assistant_message_as_parent():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        first = [p for _, p in await chat(c, auth, chat_body("one"))]
        chat_id = first[0]["chat"]["id"]
        assistant_id = first[3]["message"]["id"]
        wrong = await chat(c, auth, chat_body("two", chat_id=chat_id, parent_id="nope"))
        error = end_of(wrong)["error"]
        assert error["code"] == "failed_precondition"
        assert len(wrong) == 1
        second = await chat(c, auth, chat_body("two", chat_id=chat_id, parent_id=assistant_id))
        assert second[0][1]["chat"]["id"] == chat_id
        assert answer_text(second) == "Echo: two"
        assert [m.text for m in kimi.record.conversations[chat_id].messages] == ["one", "two"]
        assert len(kimi.record.conversations) == 1
        # camelCase spellings are accepted too (protobuf JSON)
        last = kimi.record.conversations[chat_id].segments[-1]
        body = {
            "chatId": chat_id,
            "message": {"parentId": last, "blocks": [{"text": {"content": "3"}}]},
        }
        assert answer_text(await chat(c, auth, body)) == "Echo: 3"
        unknown = await chat(c, auth, chat_body("x", chat_id="z" * 20))
        assert end_of(unknown)["error"]["code"] == "not_found"


async def test_authentication_errors_come_inside_a_200_stream():
    now = [0.0]
    async with (
        FakeKimi(access_ttl=10, clock=lambda: now[0]) as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        bad = await chat(c, {"Authorization": "Bearer not-a-token"}, chat_body("x"))
        error = end_of(bad)["error"]
        assert error["code"] == "unauthenticated"
        assert error["details"][0]["debug"]["localizedMessage"]["message"]
        auth = await login(c)
        claims = read_jwt_payload(auth["Authorization"][7:])
        assert claims is not None
        assert claims["sub"] == kimi.account_for("rt-1").user_id
        now[0] = 11.0
        expired = await chat(c, auth, chat_body("x"))
        assert end_of(expired)["error"]["code"] == "unauthenticated"
        # the JWT also works as the kimi-auth cookie
        fresh = (await login(c, kimi.account_for("rt-1").current_refresh_token))["Authorization"]
        c.cookies.set("kimi-auth", fresh[7:])
        assert answer_text(await chat(c, {}, chat_body("cookie"))) == "Echo: cookie"
        assert kimi.record.live_conversations()[0].messages[0].text == "cookie"


async def test_bad_envelopes_and_content_type():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        r = await c.post(CONNECT_CHAT_PATH, json=chat_body("x"), headers=auth)
        assert r.status_code == 415
        truncated = encode_envelope(chat_body("x"))[:-3]
        r = await c.post(CONNECT_CHAT_PATH, content=truncated, headers=CONNECT_HEADERS | auth)
        assert r.status_code == 200
        assert end_of(read_envelopes(r.content))["error"]["code"] == "invalid_argument"
        assert kimi.record.live_conversations() == []


@pytest.mark.parametrize(
    "service", ["kimi.chat.v1.ChatService", "kimi.gateway.chat.v1.ChatService"]
)
async def test_delete_chat_unary(service):
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        alice, bob = await login(c, "alice"), await login(c, "bob")
        chat_id = (await chat(c, alice, chat_body("x")))[0][1]["chat"]["id"]
        path = f"/apiv2/{service}/DeleteChat"
        foreign = await c.post(path, json={"chat_id": chat_id}, headers=bob)
        assert foreign.status_code == 403
        assert foreign.json()["code"] == "permission_denied"
        ok = await c.post(path, json={"chat_id": chat_id}, headers=alice)
        assert (ok.status_code, ok.json()) == (200, {})
        assert kimi.record.live_conversations() == []
        again = await c.post(path, json={"chat_id": chat_id}, headers=alice)
        assert again.status_code == 404
        assert again.json()["code"] == "not_found"
        create = await c.post(f"/apiv2/{service}/CreateChat", json={}, headers=alice)
        assert create.status_code == 501
        assert create.json()["code"] == "unimplemented"
        unauth = await c.post(path, json={"chat_id": chat_id})
        assert unauth.status_code == 401


async def test_thinking_and_search_frames():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        body = chat_body("rain", thinking=True, tools=[{"type": "TOOL_TYPE_SEARCH", "search": {}}])
        frames = await chat(c, auth, body)
        assert answer_text(frames, "think") == "Thinking about: rain"
        refs = [
            p["message"]["refs"]["searchChunks"]
            for _, p in frames
            if "refs" in p.get("message", {})
        ]
        assert len(refs) == 1
        assert [ch["base"]["url"][:8] for ch in refs[0]] == ["https://"] * 2
        assert any(p.get("mask") == "block.tool" for _, p in frames)
        assert answer_text(frames) == "Echo: rain"
        k2 = await chat(c, auth, chat_body("deep", scenario="SCENARIO_K2_THINKING"))
        assert answer_text(k2, "think") == "Thinking about: deep"


@pytest.mark.parametrize("thinking", ["think", "flags", "stage"])
@pytest.mark.parametrize("search", ["refs", "tool"])
async def test_every_form_of_thinking_and_search_decodes_the_same(thinking, search):
    async with (
        FakeKimi(connect_thinking=thinking, connect_search=search) as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        auth = await login(c)
        body = chat_body("rain", thinking=True, tools=[{"type": "TOOL_TYPE_SEARCH", "search": {}}])
        r = await c.post(
            CONNECT_CHAT_PATH, content=encode_envelope(body), headers=CONNECT_HEADERS | auth
        )
        payloads = [p for _, p in read_envelopes(r.content)]
        decoder = ConnectDecoder()
        events = decoder.feed(r.content) + decoder.close()
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert (reasoning, text) == ("Thinking about: rain", "Echo: rain")
    assert len([e for e in events if isinstance(e, SearchResult)]) == 2
    # each form is what it says on the wire
    assert any("think" in p.get("block", {}) for p in payloads) == (thinking == "think")
    flagged = [p for p in payloads if p.get("block", {}).get("text", {}).get("flags")]
    assert bool(flagged) == (thinking == "flags")
    assert any("multiStage" in p.get("block", {}) for p in payloads) == (thinking == "stage")
    refs = [p for p in payloads if "refs" in p.get("message", {})]
    assert bool(refs) == (search == "refs")
    assert any(p.get("mask") == "block.tool.args" for p in payloads)


async def test_files_on_the_connect_side():
    data = b"%PDF-1.4 fake"
    async with (
        FakeKimi(dialect_routes="connect") as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        auth = await login(c)
        signed = (
            await c.post(
                "/api/pre-sign-url",
                json={"action": "file", "name": "doc.pdf", "size": len(data)},
                headers=auth,
            )
        ).json()
        put = await c.put(signed["url"], content=data, headers={"Content-Type": "application/pdf"})
        assert put.status_code == 200
        registered = await c.post(
            "/api/file",
            json={
                "type": "file",
                "name": "doc.pdf",
                "size": len(data),
                "file_id": signed["file_id"],
                "object_name": signed["object_name"],
            },
            headers=auth,
        )
        file_id = registered.json()["id"]
        frames = await chat(c, auth, chat_body("sum up", files=[file_id]))
        assert answer_text(frames) == answer_for("sum up", [("doc.pdf", len(data))])
        assert kimi.record.live_conversations()[0].messages[0].refs == (file_id,)
        assert kimi.record.files[file_id].content_type == "application/pdf"
        bad = await chat(c, auth, chat_body("x", files=["missing"]))
        assert end_of(bad)["error"]["code"] == "invalid_argument"


async def test_dialect_route_sets():
    async with (
        FakeKimi(dialect_routes="legacy") as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        auth = await login(c)
        r = await c.post(
            CONNECT_CHAT_PATH, content=encode_envelope({}), headers=CONNECT_HEADERS | auth
        )
        assert r.status_code == 404
    async with (
        FakeKimi(dialect_routes="connect") as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        auth = await login(c)
        assert (await c.post("/api/chat", json={}, headers=auth)).status_code == 404
        assert (await c.get("/api/user", headers=auth)).status_code == 200
        other = await c.post("/apiv2/kimi.chat.v1.ChatService/ListChats", json={}, headers=auth)
        assert other.status_code == 404
        assert other.json()["code"] == "unimplemented"


async def test_the_model_catalog_depends_on_x_msh_version():
    path = "/apiv2/kimi.gateway.config.v1.ConfigService/GetAvailableModels"
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        assert (await c.post(path, json={})).status_code == 401
        current = await c.post(path, json={}, headers=auth | {"x-msh-version": "2.0.0"})
        stale = await c.post(path, json={}, headers=auth)
    ids = [m["id"] for m in current.json()["availableModels"]]
    assert ids == ["k2d6-chat", "k3-agent", "k3-agent-swarm"]
    assert current.json()["defaultScenario"] == {"scenario": "SCENARIO_K2D5", "model": "k2d6-chat"}
    assert [m["id"] for m in stale.json()["availableModels"]] == [
        "k2d6",
        "k2d6-thinking",
        "k2d6-agent",
    ]


@pytest.mark.parametrize(
    "served", [("kimi.gateway.chat.v1.ChatService",), ("kimi.chat.v1.ChatService",)]
)
async def test_delete_chat_can_be_served_under_one_service_only(served):
    async with (
        FakeKimi(delete_services=served) as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        auth = await login(c)
        chat_id = (await chat(c, auth, chat_body("x")))[0][1]["chat"]["id"]
        both = {"kimi.gateway.chat.v1.ChatService", "kimi.chat.v1.ChatService"}
        other = (both - set(served)).pop()
        body = {"chat_id": chat_id}
        missing = await c.post(f"/apiv2/{other}/DeleteChat", json=body, headers=auth)
        assert (missing.status_code, missing.json()["code"]) == (404, "unimplemented")
        assert len(kimi.record.live_conversations()) == 1
        ok = await c.post(f"/apiv2/{served[0]}/DeleteChat", json={"chat_id": chat_id}, headers=auth)
        assert ok.status_code == 200
        assert kimi.record.live_conversations() == []
