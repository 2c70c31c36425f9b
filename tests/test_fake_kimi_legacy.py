"""The fake Kimi's legacy dialect (kimi.moonshot.cn REST + SSE), driven over loopback HTTP."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fixtures.fake_kimi import (
    ECHO_TAIL,
    K1_AGENT_ID,
    FakeKimi,
    answer_for,
    read_jwt_payload,
    read_sse,
)

ROOT = Path(__file__).resolve().parent.parent


async def login(client: httpx.AsyncClient, refresh: str = "rt-1") -> dict[str, str]:
    r = await client.get("/api/auth/token/refresh", headers={"Authorization": f"Bearer {refresh}"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def complete(client, auth, chat_id: str, body: dict) -> tuple[int, list[dict]]:
    r = await client.post(f"/api/chat/{chat_id}/completion/stream", json=body, headers=auth)
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return r.status_code, read_sse(r.content)
    return r.status_code, [r.json()]


def text_of(events: list[dict]) -> str:
    return "".join(e["text"] for e in events if e["event"] == "cmpl")


async def test_refresh_rotates_and_the_old_token_dies():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        r1 = await c.get("/api/auth/token/refresh", headers={"Authorization": "Bearer rt-1"})
        new_refresh = r1.json()["refresh_token"]
        assert new_refresh != "rt-1"
        again = await c.get("/api/auth/token/refresh", headers={"Authorization": "Bearer rt-1"})
        assert again.status_code == 401
        assert again.json()["error_type"] == "auth.token.invalid"
        r2 = await c.get(
            "/api/auth/token/refresh", headers={"Authorization": f"Bearer {new_refresh}"}
        )
        assert r2.status_code == 200
        account = kimi.account_for("rt-1")
        assert account is not None
        assert account.refresh_count == 2
        assert account.current_refresh_token == r2.json()["refresh_token"]
        assert len(account.valid_access_tokens) == 2
        assert [r.status for r in kimi.record.refresh_calls()] == [200, 401, 200]
        assert all(r.account_id == account.id for r in kimi.record.refresh_calls())


async def test_without_rotation_the_refresh_token_stays():
    async with (
        FakeKimi(rotate_refresh=False, accept_any_refresh_token=False) as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        unknown = await c.get("/api/auth/token/refresh", headers={"Authorization": "Bearer x"})
        assert unknown.status_code == 401
        kimi.add_account("known", user_id="u" * 20)
        for _ in range(2):
            r = await c.get("/api/auth/token/refresh", headers={"Authorization": "Bearer known"})
            assert r.json()["refresh_token"] == "known"
        user = await c.get(
            "/api/user", headers={"Authorization": f"Bearer {r.json()['access_token']}"}
        )
        assert user.json()["id"] == "u" * 20


async def test_access_tokens_expire_by_the_injected_clock():
    now = [1000.0]
    async with (
        FakeKimi(access_ttl=60, clock=lambda: now[0]) as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        auth = await login(c)
        assert (await c.get("/api/user", headers=auth)).status_code == 200
        now[0] += 61
        expired = await c.get("/api/user", headers=auth)
        assert expired.status_code == 401
        assert expired.json()["error_type"] == "auth.token.invalid"
        account = kimi.account_for("rt-1")
        assert account is not None
        assert account.valid_access_tokens == []


async def test_token_shapes_per_dialect():
    async with (
        FakeKimi(dialect_routes="legacy") as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        token = (await login(c))["Authorization"][7:]
        assert read_jwt_payload(token) is None
    async with FakeKimi(access_ttl=900) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        token = (await login(c))["Authorization"][7:]
        claims = read_jwt_payload(token)
        user = (await c.get("/api/user", headers={"Authorization": f"Bearer {token}"})).json()
        assert claims is not None
        assert claims["sub"] == user["id"]
        assert {"ssid", "device_id"} <= set(claims)
        assert abs(claims["exp"] - (time.time() + 900)) < 5


async def test_create_complete_delete_flow_leaves_nothing_behind():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        created = await c.post(
            "/api/chat",
            json={"name": "未命名会话", "is_example": False, "kimiplus_id": "kimi"},
            headers=auth,
        )
        chat_id = created.json()["id"]
        assert len(chat_id) == 20
        assert chat_id.isalnum()
        assert chat_id == chat_id.lower()
        prompt = "你好, what is 2+2?"
        status, events = await complete(
            c, auth, chat_id, {"messages": [{"role": "user", "content": prompt}], "refs": []}
        )
        assert status == 200
        assert [e["event"] for e in events[:2]] == ["req", "resp"]
        assert events[-1] == {"event": "all_done"}
        assert text_of(events) == "Echo: " + prompt
        conv = kimi.record.conversations[chat_id]
        assert conv.messages[0].text == prompt
        assert conv.segments == [events[0]["id"]]
        assert kimi.record.live_conversations() == [conv]
        assert (await c.delete(f"/api/chat/{chat_id}", headers=auth)).json() == {}
        assert kimi.record.live_conversations() == []
        assert kimi.record.deleted_conversations() == [conv]
        completion = kimi.record.calls("completion")[0]
        assert completion.json["messages"][0]["content"] == prompt
        assert completion.headers["authorization"].startswith("Bearer ")


async def test_ids_are_deterministic_from_the_seed():
    ids = []
    for _ in range(2):
        async with FakeKimi(seed=7) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
            auth = await login(c)
            ids.append((await c.post("/api/chat", json={}, headers=auth)).json()["id"])
    assert ids[0] == ids[1]


async def test_delete_of_unknown_or_foreign_conversation_is_an_error():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        alice, bob = await login(c, "alice"), await login(c, "bob")
        chat_id = (await c.post("/api/chat", json={}, headers=alice)).json()["id"]
        foreign = await c.delete(f"/api/chat/{chat_id}", headers=bob)
        assert foreign.status_code == 403
        assert "error_type" in foreign.json()
        unknown = await c.delete("/api/chat/" + "0" * 20, headers=alice)
        assert unknown.status_code == 404
        assert unknown.json()["error_type"] == "chat.not_found"
        status, _body = await complete(
            c, bob, chat_id, {"messages": [{"role": "user", "content": "x"}]}
        )
        assert status == 403
        assert (await c.delete(f"/api/chat/{chat_id}", headers=alice)).status_code == 200
        assert (await c.delete(f"/api/chat/{chat_id}", headers=alice)).status_code == 404
        no_auth = await c.post("/api/chat", json={})
        assert no_auth.status_code == 401


async def test_the_answer_echoes_the_tail_of_the_prompt():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        chat_id = (await c.post("/api/chat", json={}, headers=auth)).json()["id"]
        prompt = "".join(f"{i}-" for i in range(200))
        _, events = await complete(
            c, auth, chat_id, {"messages": [{"role": "user", "content": prompt}]}
        )
        assert text_of(events) == "Echo: " + prompt[-ECHO_TAIL:]


async def test_streaming_arrives_in_many_small_writes():
    async with (
        FakeKimi(chunk_size=(1, 3), token_rate=400) as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        auth = await login(c)
        chat_id = (await c.post("/api/chat", json={}, headers=auth)).json()["id"]
        body = {"messages": [{"role": "user", "content": "é" * 40}]}
        chunks: list[bytes] = []
        async with c.stream(
            "POST", f"/api/chat/{chat_id}/completion/stream", json=body, headers=auth
        ) as r:
            async for chunk in r.aiter_raw():
                chunks.append(chunk)
        whole = b"".join(chunks)
        assert text_of(read_sse(whole)) == "Echo: " + "é" * 40
        writes = kimi.record.calls("completion")[0].writes
        assert sum(writes) == len(whole)
        assert max(writes) <= 3
        assert len(writes) > 200
        # paced events arrive separately: the client saw many reads
        assert len(chunks) >= 10


async def test_files_four_steps_record_the_bytes():
    data = "café\n".encode() * 10
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        chat_id = (await c.post("/api/chat", json={}, headers=auth)).json()["id"]
        signed = (
            await c.post(
                "/api/pre-sign-url", json={"action": "file", "name": "a.txt"}, headers=auth
            )
        ).json()
        assert signed["url"].startswith(kimi.base_url + "/_upload/")
        bad = await c.put(signed["url"].split("?")[0] + "?sig=nope", content=data)
        assert bad.status_code == 403
        put = await c.put(signed["url"], content=data, headers={"Content-Type": "text/plain"})
        assert put.status_code == 200
        assert kimi.record.uploads[signed["object_name"]] == data
        register = {
            "type": "file",
            "name": "a.txt",
            "object_name": signed["object_name"],
            "file_id": "",
            "chat_id": chat_id,
        }
        statuses = []
        for _ in range(3):
            detail = (await c.post("/api/file", json=register, headers=auth)).json()
            statuses.append(detail["status"])
            if detail["status"] in ("initialized", "parsed"):
                break
        assert statuses == ["uploading", "initialized"]
        assert detail["size"] == len(data)
        parse = await c.post("/api/file/parse_process", json={"ids": [detail["id"]]}, headers=auth)
        events = read_sse(parse.content)
        assert events[-2] == {"event": "resp", "id": detail["id"], "status": "parsed"}
        assert events[-1] == {"event": "all_done"}
        record = kimi.record.files[detail["id"]]
        assert (record.status, record.content_type, record.name) == (
            "parsed",
            "text/plain",
            "a.txt",
        )
        _, answer = await complete(
            c,
            auth,
            chat_id,
            {"messages": [{"role": "user", "content": "read it"}], "refs": [detail["id"]]},
        )
        assert text_of(answer) == answer_for("read it", [("a.txt", len(data))])
        assert text_of(answer).endswith(f"[files: a.txt ({len(data)} bytes)]")
        status, error = await complete(
            c, auth, chat_id, {"messages": [{"role": "user", "content": "x"}], "refs": ["nope"]}
        )
        assert status == 400
        assert error[0]["error_type"] == "file.not_found"


async def test_search_and_k1_events():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        chat_id = (await c.post("/api/chat", json={}, headers=auth)).json()["id"]
        body = {
            "messages": [{"role": "user", "content": "weather"}],
            "use_search": True,
            "kimiplus_id": K1_AGENT_ID,
        }
        _, events = await complete(c, auth, chat_id, body)
        kinds = [e["event"] for e in events]
        hits = [
            e["msg"]
            for e in events
            if e["event"] == "search_plus" and e["msg"]["type"] == "get_res"
        ]
        assert len(hits) == 2
        assert all(h["url"].startswith("https://") for h in hits)
        thinking = "".join(e["text"] for e in events if e["event"] == "k1")
        assert thinking == "Thinking about: weather"
        assert kinds.index("search_plus") < kinds.index("k1") < kinds.index("cmpl")
        _, plain = await complete(
            c, auth, chat_id, {"messages": [{"role": "user", "content": "x"}], "model": "k2"}
        )
        assert {e["event"] for e in plain} == {"req", "resp", "cmpl", "all_done"}


async def test_research_usage_and_side_calls():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        usage = (await c.get("/api/chat/research/usage", headers=auth)).json()
        assert usage == {"remain": 10, "total": 10, "used": 0}
        chat_id = (await c.post("/api/chat", json={}, headers=auth)).json()["id"]
        await complete(
            c, auth, chat_id, {"messages": [{"role": "user", "content": "q"}], "use_research": True}
        )
        assert (await c.get("/api/chat/research/usage", headers=auth)).json()["used"] == 1
        for method, path in [
            ("POST", f"/api/chat/{chat_id}/pre-n2s"),
            ("POST", "/api/suggestion"),
            ("POST", f"/api/chat/{chat_id}/token_size"),
            ("GET", "/api/user/usage"),
        ]:
            r = await c.request(method, path, json={} if method == "POST" else None, headers=auth)
            assert r.status_code == 200
            assert isinstance(r.json(), dict)
        assert len(kimi.record.calls("side")) == 4
        assert (await c.get("/api/nothing-here")).status_code == 404


async def test_rtt_delays_each_response():
    async with FakeKimi(rtt=0.1) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        start = time.perf_counter()
        await login(c)
        assert time.perf_counter() - start >= 0.1


async def test_tls_with_the_generated_ca():
    async with FakeKimi(tls=True) as kimi:
        assert kimi.base_url.startswith("https://127.0.0.1:")
        assert kimi.ca_cert_path is not None
        context = ssl.create_default_context(cafile=kimi.ca_cert_path)
        async with httpx.AsyncClient(base_url=kimi.base_url, verify=context) as c:
            auth = await login(c)
            assert (await c.get("/api/user", headers=auth)).status_code == 200
        localhost = kimi.base_url.replace("127.0.0.1", "localhost")
        async with httpx.AsyncClient(base_url=localhost, verify=context) as c:
            assert (await c.get("/api/user")).status_code == 401
        async with httpx.AsyncClient(base_url=kimi.base_url) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get("/api/user")
        ca_path = Path(kimi.ca_cert_path)
    assert not ca_path.exists()


async def test_standalone_module_prints_its_url_and_serves():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "fixtures.fake_kimi", "--port", "0", "--rtt", "0.01"]
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
            assert line.startswith("fake Kimi listening at http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1].strip()
            async with httpx.AsyncClient(base_url=url) as c:
                await login(c)
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
    assert proc.returncode == 0, err


async def test_image_registration_by_file_id():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        signed = (
            await c.post(
                "/api/pre-sign-url", json={"action": "image", "name": "p.png"}, headers=auth
            )
        ).json()
        png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
        await c.put(signed["url"], content=png, headers={"Content-Type": "image/png"})
        body = {"type": "image", "file_id": signed["file_id"], "name": "p.png"}
        detail = (await c.post("/api/file", json=body, headers=auth)).json()
        assert (detail["id"], detail["type"], detail["size"]) == (signed["file_id"], "image", 16)
        assert kimi.record.upload_content_types[signed["object_name"]] == "image/png"
        missing = await c.post(
            "/api/file", json={"type": "image", "file_id": "nope", "name": "x"}, headers=auth
        )
        assert missing.status_code == 400
