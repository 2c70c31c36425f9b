"""Every fault of the fake Kimi, driven over loopback HTTP, plus scenario loading and matching."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from fixtures.fake_kimi import (
    CONNECT_CHAT_PATH,
    FakeKimi,
    Fault,
    Scenario,
    encode_envelope,
    read_envelopes,
    read_sse,
)

ROOT = Path(__file__).resolve().parent.parent
CONNECT_HEADERS = {"Content-Type": "application/connect+json", "connect-protocol-version": "1"}
PROMPT = "the quick brown fox jumps over the lazy dog"
ANSWER = "Echo: " + PROMPT


async def login(c: httpx.AsyncClient, refresh: str = "rt-1") -> dict[str, str]:
    r = await c.get("/api/auth/token/refresh", headers={"Authorization": f"Bearer {refresh}"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def new_chat(c, auth) -> str:
    r = await c.post("/api/chat", json={}, headers=auth)
    assert r.status_code == 200
    return r.json()["id"]


def completion_body(prompt: str = PROMPT) -> dict:
    return {"messages": [{"role": "user", "content": prompt}], "refs": []}


async def raw_stream(c, method, url, **kwargs) -> tuple[httpx.Response, bytes, Exception | None]:
    """Read a streamed body as far as it goes; return the error that ended it, if any."""
    data = b""
    async with c.stream(method, url, **kwargs) as r:
        try:
            async for chunk in r.aiter_raw():
                data += chunk
        except (httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.ReadError) as exc:
            return r, data, exc
    return r, data, None


def cmpl_text(events) -> str:
    return "".join(e["text"] for e in events if e["event"] == "cmpl")


def connect_text(frames) -> str:
    return "".join(
        p["block"]["text"]["content"]
        for _, p in frames
        if p.get("mask", "").startswith("block.text")
    )


def connect_body(prompt: str = PROMPT) -> bytes:
    message = {"parent_id": "", "role": "user", "blocks": [{"text": {"content": prompt}}]}
    return encode_envelope({"chat_id": "", "message": message, "options": {"thinking": False}})


async def connect_chat(c, auth) -> list[tuple[int, dict]]:
    r = await c.post(CONNECT_CHAT_PATH, content=connect_body(), headers=CONNECT_HEADERS | auth)
    assert r.status_code == 200
    return read_envelopes(r.content)


# --- HTTP-level faults ----------------------------------------------------------------------


async def test_http_status_applies_times_then_stops():
    scenario = Scenario.of(Fault(kind="http_status", match="completion", status=503, times=2))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        chat_id = await new_chat(c, auth)
        url = f"/api/chat/{chat_id}/completion/stream"
        statuses = [(await c.post(url, json=completion_body(), headers=auth)) for _ in range(3)]
        assert [r.status_code for r in statuses] == [503, 503, 200]
        assert statuses[0].json()["error_type"] == "server.error"
        assert cmpl_text(read_sse(statuses[2].content)) == ANSWER
        assert [r.status for r in kimi.record.calls("completion")] == [503, 503, 200]


async def test_http_status_on_connect_unary_uses_connect_error_json():
    scenario = Scenario.of(Fault(kind="http_status", match="delete", status=503, nth=1))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        chat_id = (await connect_chat(c, auth))[0][1]["chat"]["id"]
        path = "/apiv2/kimi.chat.v1.ChatService/DeleteChat"
        failed = await c.post(path, json={"chat_id": chat_id}, headers=auth)
        assert failed.status_code == 503
        assert failed.json()["code"] == "unavailable"
        assert len(kimi.record.live_conversations()) == 1
        assert (await c.post(path, json={"chat_id": chat_id}, headers=auth)).status_code == 200
        assert kimi.record.live_conversations() == []


async def test_token_invalid_and_revoke_force_a_refresh():
    scenario = Scenario.of(Fault(kind="token_invalid", match="user", times=1, revoke=True))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        r = await c.get("/api/user", headers=auth)
        assert (r.status_code, r.json()["error_type"]) == (401, "auth.token.invalid")
        # revoked: the same access token stays dead after the fault is used up
        assert (await c.get("/api/chat/research/usage", headers=auth)).status_code == 401
        account = kimi.account_for("rt-1")
        fresh = await login(c, account.current_refresh_token)
        assert (await c.get("/api/user", headers=fresh)).status_code == 200


async def test_dead_refresh_token_stays_dead():
    scenario = Scenario.of(Fault(kind="dead_refresh", match="refresh", token="doomed", times=1))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        for _ in range(2):
            r = await c.get("/api/auth/token/refresh", headers={"Authorization": "Bearer doomed"})
            assert (r.status_code, r.json()["error_type"]) == (401, "auth.token.invalid")
        assert kimi.account_for("doomed").dead
        await login(c, "healthy")  # other accounts are untouched


async def test_delay_slows_an_upload_and_http_status_fails_one():
    scenario = Scenario.of(
        Fault(kind="delay", match="upload", seconds=0.3, nth=1),
        Fault(kind="http_status", match="upload", status=500, nth=2),
    )
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        signed = (
            await c.post("/api/pre-sign-url", json={"action": "file", "name": "a"}, headers=auth)
        ).json()
        start = time.perf_counter()
        assert (await c.put(signed["url"], content=b"1")).status_code == 200
        assert time.perf_counter() - start >= 0.3
        assert (await c.put(signed["url"], content=b"2")).status_code == 500
        assert kimi.record.uploads[signed["object_name"]] == b"1"


# --- legacy stream faults -------------------------------------------------------------------


async def test_stream_pushing_is_a_json_error():
    scenario = Scenario.of(Fault(kind="stream_pushing", match="completion", times=1))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        url = f"/api/chat/{await new_chat(c, auth)}/completion/stream"
        r = await c.post(url, json=completion_body(), headers=auth)
        assert r.status_code == 400
        assert r.json()["error_type"] == "chat.user_stream_pushing"
        assert (await c.post(url, json=completion_body(), headers=auth)).status_code == 200


@pytest.mark.parametrize("wire", ["stream", "json"])
async def test_long_text_limit(wire):
    scenario = Scenario.of(Fault(kind="long_text_limit", match="completion", wire=wire))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        url = f"/api/chat/{await new_chat(c, auth)}/completion/stream"
        r = await c.post(url, json=completion_body(), headers=auth)
        if wire == "json":
            assert r.status_code == 429
            assert r.json()["error_type"] == "chat.long_text_rate_limit"
        else:
            events = read_sse(r.content)
            assert [e["event"] for e in events] == ["req", "resp", "error"]
            assert events[-1]["error"]["error_type"] == "chat.long_text_rate_limit"


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [("moderation", "chat.forbidden"), ("stream_error", "openai.completion.stream")],
)
async def test_in_stream_error_after_part_of_the_answer(kind, error_type):
    scenario = Scenario.of(Fault(kind=kind, match="completion", after_chars=12))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        url = f"/api/chat/{await new_chat(c, auth)}/completion/stream"
        events = read_sse((await c.post(url, json=completion_body(), headers=auth)).content)
        assert cmpl_text(events) == ANSWER[:12]
        assert events[-1]["event"] == "error"
        assert events[-1]["error"]["error_type"] == error_type
        assert "all_done" not in [e["event"] for e in events]


async def test_length_stop_then_continuation_gives_the_rest():
    scenario = Scenario.from_yaml(ROOT / "fixtures/scenarios/length-stop.yaml")
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        chat_id = await new_chat(c, auth)
        url = f"/api/chat/{chat_id}/completion/stream"
        first = read_sse((await c.post(url, json=completion_body(), headers=auth)).content)
        assert [e["event"] for e in first[-2:]] == ["length", "all_done"]
        assert cmpl_text(first) == ANSWER[:10]
        segment = first[0]["id"]
        body = {
            "segment_id": segment,
            "action": "continue",
            "messages": [{"role": "user", "content": " "}],
            "kimiplus_id": "kimi",
            "extend": {"sidebar": True},
        }
        rest = read_sse((await c.post(url, json=body, headers=auth)).content)
        assert cmpl_text(first) + cmpl_text(rest) == ANSWER
        assert rest[-1] == {"event": "all_done"}
        again = await c.post(url, json=body, headers=auth)
        assert again.status_code == 400
        assert again.json()["error_type"] == "chat.segment_not_found"
        conv = kimi.record.conversations[chat_id]
        assert conv.messages[1].action == "continue"
        assert conv.messages[1].segment_id == segment


async def test_empty_done_legacy():
    scenario = Scenario.of(Fault(kind="empty_done", match="completion"))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        url = f"/api/chat/{await new_chat(c, auth)}/completion/stream"
        events = read_sse((await c.post(url, json=completion_body(), headers=auth)).content)
        assert [e["event"] for e in events] == ["req", "resp", "all_done"]


async def test_unknown_events_are_interleaved_in_both_dialects():
    scenario = Scenario.of(
        Fault(kind="unknown_events", match="any", every=2, kinds=("zz_future_event", "ping"))
    )
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        url = f"/api/chat/{await new_chat(c, auth)}/completion/stream"
        events = read_sse((await c.post(url, json=completion_body(), headers=auth)).content)
        kinds = [e["event"] for e in events]
        assert {"zz_future_event", "ping"} <= set(kinds)
        assert cmpl_text(events) == ANSWER
        frames = await connect_chat(c, auth)
        assert any("zz_future_event" in p for _, p in frames)
        assert connect_text(frames) == ANSWER


async def test_cut_ends_the_connection_after_n_bytes():
    scenario = Scenario.of(Fault(kind="cut", match="completion", after_bytes=150))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        url = f"/api/chat/{await new_chat(c, auth)}/completion/stream"
        _, data, error = await raw_stream(c, "POST", url, json=completion_body(), headers=auth)
        assert isinstance(error, httpx.RemoteProtocolError)
        assert len(data) == 150
        assert data.startswith(b'data: {"event":"req"')
        # the fake survives and serves the next request
        assert (await c.get("/api/user", headers=auth)).status_code == 200


async def test_drip_delays_every_write():
    scenario = Scenario.of(Fault(kind="drip", match="completion", seconds=0.004))
    async with (
        FakeKimi(scenario=scenario, chunk_size=(8, 8)) as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        auth = await login(c)
        url = f"/api/chat/{await new_chat(c, auth)}/completion/stream"
        chunks = 0
        start = time.perf_counter()
        async with c.stream("POST", url, json=completion_body(), headers=auth) as r:
            async for _ in r.aiter_raw():
                chunks += 1
        elapsed = time.perf_counter() - start
        writes = kimi.record.calls("completion")[0].writes
        assert elapsed >= len(writes) * 0.004
        assert chunks >= len(writes) // 2


async def test_stall_keeps_the_connection_silent():
    scenario = Scenario.of(
        Fault(kind="stall", match="completion", after_bytes=60, seconds=5, nth=1),
        Fault(kind="stall", match="completion", after_bytes=0, seconds=0.3, nth=2),
    )
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        url = f"/api/chat/{await new_chat(c, auth)}/completion/stream"
        timeout = httpx.Timeout(5, read=0.3)
        r, data, error = await raw_stream(
            c, "POST", url, json=completion_body(), headers=auth, timeout=timeout
        )
        assert isinstance(error, httpx.ReadTimeout)
        assert len(data) == 60
        # a stall that ends: headers, no body, then the connection closes
        start = time.perf_counter()
        r, data, error = await raw_stream(c, "POST", url, json=completion_body(), headers=auth)
        assert r.status_code == 200
        assert (data, type(error)) == (b"", httpx.RemoteProtocolError)
        assert time.perf_counter() - start >= 0.3


async def test_gzip_answer_regardless_of_accept_encoding():
    scenario = Scenario.of(Fault(kind="gzip", match="completion"))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        url = f"/api/chat/{await new_chat(c, auth)}/completion/stream"
        headers = auth | {"Accept-Encoding": "identity"}
        r, raw, error = await raw_stream(c, "POST", url, json=completion_body(), headers=headers)
        assert error is None
        assert r.headers["content-encoding"] == "gzip"
        assert raw[:2] == b"\x1f\x8b"
        decoded = await c.post(url, json=completion_body(), headers=headers)
        assert cmpl_text(read_sse(decoded.content)) == ANSWER


# --- files ------------------------------------------------------------------------------------


async def _uploaded_file(c, auth) -> str:
    signed = (
        await c.post("/api/pre-sign-url", json={"action": "file", "name": "n.txt"}, headers=auth)
    ).json()
    await c.put(signed["url"], content=b"abc")
    body = {"type": "file", "name": "n.txt", "object_name": signed["object_name"], "file_id": ""}
    return (await c.post("/api/file", json=body, headers=auth)).json()["id"]


async def test_parse_stuck_never_completes():
    scenario = Scenario.of(Fault(kind="parse_stuck", match="parse", seconds=0.4))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        file_id = await _uploaded_file(c, auth)
        _, data, error = await raw_stream(
            c, "POST", "/api/file/parse_process", json={"ids": [file_id]}, headers=auth
        )
        assert isinstance(error, httpx.RemoteProtocolError)
        statuses = {e["status"] for e in read_sse(data)}
        assert statuses == {"parsing"}
        assert kimi.record.files[file_id].status != "parsed"


async def test_parse_failed():
    scenario = Scenario.of(Fault(kind="parse_failed", match="parse"))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        file_id = await _uploaded_file(c, auth)
        r = await c.post("/api/file/parse_process", json={"ids": [file_id]}, headers=auth)
        events = read_sse(r.content)
        assert events[-2]["status"] == "failed"
        assert kimi.record.files[file_id].status == "failed"


# --- connect faults -------------------------------------------------------------------------


@pytest.mark.parametrize("paywall", [True, False])
async def test_connect_resource_exhausted_in_the_end_envelope(paywall):
    scenario = Scenario.of(
        Fault(kind="connect_error", match="chat", code="resource_exhausted", paywall=paywall)
    )
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        frames = await connect_chat(c, auth)
        assert len(frames) == 1
        flags, payload = frames[0]
        assert flags == 0x02
        debug = payload["error"]["details"][0]["debug"]
        assert payload["error"]["code"] == "resource_exhausted"
        assert ("paywall" in debug) is paywall
        assert debug["reason"]
        assert kimi.record.live_conversations() == []


async def test_connect_unavailable_mid_answer_as_a_frame():
    fault = Fault(
        kind="connect_error", match="chat", code="unavailable", after_chars=8, placement="frame"
    )
    async with (
        FakeKimi(scenario=Scenario.of(fault)) as kimi,
        httpx.AsyncClient(base_url=kimi.base_url) as c,
    ):
        auth = await login(c)
        frames = await connect_chat(c, auth)
        assert connect_text(frames) == ANSWER[:8]
        assert frames[-2] == (0, frames[-2][1])
        assert frames[-2][1]["error"]["code"] == "unavailable"
        assert frames[-1] == (0x02, {})
        assert (
            len(kimi.record.live_conversations()) == 1
        )  # the chat exists: the client must delete it


async def test_connect_token_invalid_is_unauthenticated_in_stream():
    scenario = Scenario.of(Fault(kind="token_invalid", match="chat", times=1))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        assert (await connect_chat(c, auth))[-1][1]["error"]["code"] == "unauthenticated"
        assert connect_text(await connect_chat(c, auth)) == ANSWER


async def test_connect_heartbeat_only_stall():
    scenario = Scenario.of(Fault(kind="heartbeat_stall", match="chat", seconds=0.5))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        _, data, error = await raw_stream(
            c, "POST", CONNECT_CHAT_PATH, content=connect_body(), headers=CONNECT_HEADERS | auth
        )
        assert isinstance(error, httpx.RemoteProtocolError)
        frames = read_envelopes(data)
        assert all(flags == 0 for flags, _ in frames)
        after_generating = [p for _, p in frames[4:]]
        assert len(after_generating) >= 2
        assert all(p == {"heartbeat": {}} for p in after_generating)


@pytest.mark.parametrize("code", [None, "resource_exhausted"])
async def test_connect_done_without_content(code):
    scenario = Scenario.of(Fault(kind="empty_done", match="chat", code=code))
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        frames = await connect_chat(c, auth)
        assert connect_text(frames) == ""
        assert {"done": {}} in [p for _, p in frames]
        end = frames[-1]
        assert end[0] == 0x02
        assert (end[1].get("error", {}).get("code")) == code


# --- matching and loading -------------------------------------------------------------------


async def test_account_token_and_nth_filters():
    async with FakeKimi() as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        alice, bob = await login(c, "alice"), await login(c, "bob")
        alice_id = kimi.account_for("alice").id
        kimi.set_scenario(
            Scenario.of(Fault(kind="http_status", match="user", status=502)), account=alice_id
        )
        assert (await c.get("/api/user", headers=alice)).status_code == 502
        assert (await c.get("/api/user", headers=bob)).status_code == 200
        kimi.set_scenario(None, account=alice_id)
        kimi.set_scenario(Scenario.of(Fault(kind="http_status", match="any", token="bob", nth=2)))
        codes = [(await c.get("/api/user", headers=h)).status_code for h in (bob, alice, bob, bob)]
        assert codes == [200, 200, 500, 200]
        user_id = kimi.account_for("alice").user_id
        kimi.set_scenario(Scenario.of(Fault(kind="http_status", match="user", account=user_id)))
        assert (await c.get("/api/user", headers=alice)).status_code == 500
        assert (await c.get("/api/user", headers=bob)).status_code == 200


def test_scenario_yaml_loading_and_validation():
    text = """
name: t
faults:
  - {kind: unknown_events, match: chat, kinds: [a, b], every: 5}
"""
    scenario = Scenario.from_yaml(text)
    assert scenario.name == "t"
    assert scenario.faults == (
        Fault(kind="unknown_events", match="chat", kinds=("a", "b"), every=5),
    )
    assert Scenario.from_yaml("- {kind: gzip}").faults == (Fault(kind="gzip"),)
    with pytest.raises(ValueError, match="unknown fault kind"):
        Scenario.from_yaml("- {kind: explode}")
    with pytest.raises(ValueError, match="unknown route"):
        Scenario.from_yaml("- {kind: gzip, match: nowhere}")
    with pytest.raises(ValueError, match="unknown fault fields"):
        Scenario.from_yaml("- {kind: gzip, tims: 2}")
    files = sorted((ROOT / "fixtures/scenarios").glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        assert Scenario.from_yaml(path).faults, path
        assert Scenario.from_yaml(str(path)) == Scenario.from_yaml(path)


def test_fault_windows():
    assert [Fault(kind="gzip", times=2).window_fits(n) for n in (1, 2, 3)] == [True, True, False]
    assert [Fault(kind="gzip", nth=2).window_fits(n) for n in (1, 2, 3)] == [False, True, False]
    assert [Fault(kind="gzip", nth=2, times=2).window_fits(n) for n in (1, 2, 3, 4)] == [
        False,
        True,
        True,
        False,
    ]
    # kinds only act (and count) where they make sense
    assert not Fault(kind="gzip", match="any").route_fits("refresh")
    assert Fault(kind="gzip", match="any").route_fits("chat")


async def test_cut_and_gzip_on_the_connect_stream():
    scenario = Scenario.of(
        Fault(kind="cut", match="chat", after_bytes=90, nth=1),
        Fault(kind="gzip", match="chat", nth=2),
    )
    async with FakeKimi(scenario=scenario) as kimi, httpx.AsyncClient(base_url=kimi.base_url) as c:
        auth = await login(c)
        headers = CONNECT_HEADERS | auth
        _, data, error = await raw_stream(
            c, "POST", CONNECT_CHAT_PATH, content=connect_body(), headers=headers
        )
        assert isinstance(error, httpx.RemoteProtocolError)
        assert len(data) == 90
        with pytest.raises(ValueError, match="truncated"):
            read_envelopes(data)
        r = await c.post(CONNECT_CHAT_PATH, content=connect_body(), headers=headers)
        assert r.headers["content-encoding"] == "gzip"
        assert connect_text(read_envelopes(r.content)) == ANSWER
