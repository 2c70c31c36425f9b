"""End to end under every fault the fake Kimi can inject (docs/upstream-protocol.md, "faults"),
in both dialects wherever the fault exists there.

What the client must see: a proper OpenAI JSON error (validated against `openai.error`) while
nothing was sent yet; after the first chunk, a final `{"error": ...}` event and `[DONE]`. What
the fake must see: one refresh-and-retry after a refused access token, a continuation call after a
`length` stop, and no conversation left behind after errors and hang-ups.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid
from tests.test_e2e_dialects import (
    TOKEN,
    data_payloads,
    delta_text,
    error_body,
    finish_reasons,
    post_raw,
    sdk,
    stream_calls,
    used_conversations,
    user,
    valid_chunks,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

LONG = "a rather long question " * 8  # a long echo, so a cut lands inside the answer


def stream_route(dialect: str) -> str:
    return "completion" if dialect == "legacy" else "chat"


@pytest.fixture
async def proxy(fake, dialect, tmp_path):
    async with running_proxy(
        fake.base_url, tmp_path, kimi_dialect=dialect, precreate_conversations=0
    ) as p:
        yield p


def faults(fake: FakeKimi, *items: Fault) -> None:
    fake.set_scenario(Scenario.of(*items))


async def chat(proxy, text: str = "hello", *, stream: bool = False, **extra) -> httpx.Response:
    """One non-streamed request with httpx (the body is read)."""
    body = {"model": "kimi", "stream": stream, "messages": [user(text)], **extra}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {TOKEN}"},
        )


def stream_body(text: str = "hello", model: str = "kimi") -> dict:
    return {"model": model, "stream": True, "messages": [user(text)]}


# --- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("revoke", [False, True])
async def test_refused_access_token_is_refreshed_once_and_retried(fake, dialect, proxy, revoke):
    faults(fake, Fault(kind="token_invalid", match=stream_route(dialect), times=1, revoke=revoke))
    async with sdk(proxy) as client:
        result = await client.chat.completions.create(model="kimi", messages=[user("retry me")])
    assert_valid("openai.response", result.to_dict())
    assert result.choices[0].message.content == "Echo: retry me"
    assert len(fake.record.refresh_calls()) == 2
    calls = stream_calls(fake, dialect)
    assert len(calls) == 2
    # The retry carried the new access token.
    assert calls[0].headers["authorization"] != calls[1].headers["authorization"]


async def test_dead_refresh_token_is_a_401(fake, dialect, proxy):
    faults(fake, Fault(kind="dead_refresh", match="refresh"))
    resp = await chat(proxy)
    assert resp.status_code == 401
    assert error_body(resp)["type"] == "authentication_error"
    assert stream_calls(fake, dialect) == []
    (account,) = await proxy.addon.runtime.store.list_accounts()
    assert account.health == "dead"


async def test_failover_from_a_dead_account_to_a_good_one(fake, dialect, proxy):
    faults(fake, Fault(kind="dead_refresh", match="refresh", token="refresh-bad"))
    async with sdk(proxy, "refresh-bad,refresh-good") as client:
        result = await client.chat.completions.create(model="kimi", messages=[user("who?")])
        stream = await client.chat.completions.create(
            model="kimi", stream=True, messages=[user("again")]
        )
        chunks = [c.to_dict() async for c in stream]
    assert result.choices[0].message.content == "Echo: who?"
    assert delta_text(chunks) == "Echo: again"
    good = fake.account_for("refresh-good")
    assert good is not None
    assert {c.account_id for c in stream_calls(fake, dialect)} == {good.id}
    health = sorted(a.health for a in await proxy.addon.runtime.store.list_accounts())
    assert health == ["dead", "ok"]
    dead = next(a for a in await proxy.addon.runtime.store.list_accounts() if a.health == "dead")
    assert dead.last_error


# --- refusals before the answer ----------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="stream_pushing", match="completion"),
        Fault(kind="long_text_limit", match="completion"),
        Fault(kind="long_text_limit", match="completion", wire="json"),
    ],
    ids=["stream_pushing", "long_text_in_stream", "long_text_json"],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_legacy_limits_are_429(fake, tmp_path, fault, stream):
    faults(fake, fault)
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy:
        resp = await chat(proxy, stream=stream)
    assert resp.status_code == 429
    assert resp.headers["content-type"].startswith("application/json")
    assert error_body(resp)["type"] == "rate_limit_error"


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_on_the_answer_call(fake, dialect, proxy, status):
    faults(fake, Fault(kind="http_status", match=stream_route(dialect), status=status))
    # Legacy: every 5xx is an upstream_error 502 (translator/legacy/_errors.py); Connect: the
    # error code decides, and 503 is `unavailable`, which clients may retry.
    expected = 503 if (dialect, status) == ("connect", 503) else 502
    for stream in (False, True):
        resp = await chat(proxy, stream=stream)
        assert resp.status_code == expected
        assert resp.headers["content-type"].startswith("application/json")
        error_body(resp)
    assert fake.record.live_conversations() == []


async def test_5xx_on_create_conversation(fake, tmp_path):
    faults(fake, Fault(kind="http_status", match="create", status=500))
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy:
        resp = await chat(proxy, stream=True)
    assert resp.status_code == 502
    error_body(resp)
    assert fake.record.calls("completion") == []


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        (Fault(kind="connect_error", code="resource_exhausted"), 429, "rate_limit_error"),
        (
            Fault(kind="connect_error", code="resource_exhausted", paywall=True),
            402,
            "insufficient_quota",
        ),
        (Fault(kind="connect_error", code="unavailable"), 503, None),
        (Fault(kind="connect_error", code="unavailable", placement="frame"), 503, None),
    ],
    ids=["resource_exhausted", "paywall", "unavailable", "unavailable_frame"],
)
async def test_connect_error_frames(fake, tmp_path, fault, status, error_type):
    faults(fake, fault)
    # No cooldown: the second request must reach Kimi too, not be refused by the pool.
    async with running_proxy(
        fake.base_url, tmp_path, kimi_dialect="connect", account_cooldown=0
    ) as proxy:
        for stream in (False, True):
            resp = await chat(proxy, stream=stream)
            assert resp.status_code == status
            error = error_body(resp)
            if error_type is not None:
                assert error["type"] == error_type
    assert len(fake.record.calls("chat")) == 2
    # Errors before content come before the chat exists: nothing to clean up.
    assert fake.record.conversations == {}


async def test_connect_unauthenticated_refreshes_once_then_401(fake, tmp_path):
    faults(fake, Fault(kind="connect_error", code="unauthenticated"))
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect="connect") as proxy:
        resp = await chat(proxy)
    assert resp.status_code == 401
    assert error_body(resp)["type"] == "authentication_error"
    assert len(fake.record.calls("chat")) == 2
    assert len(fake.record.refresh_calls()) == 2


# --- faults inside the answer ----------------------------------------------------------------


async def test_moderation_keeps_partial_content_and_deletes(fake, dialect, proxy):
    if dialect == "legacy":
        fault = Fault(kind="moderation", match="completion", after_chars=8)
    else:
        fault = Fault(
            kind="connect_error",
            code="permission_denied",
            reason="REASON_CONTENT_SENSITIVE",
            after_chars=8,
        )
    faults(fake, fault)
    async with sdk(proxy) as client:
        whole = await client.chat.completions.create(model="kimi", messages=[user("moderate me")])
        stream = await client.chat.completions.create(
            model="kimi", stream=True, messages=[user("moderate me")]
        )
        chunks = [c.to_dict() async for c in stream]
    assert_valid("openai.response", whole.to_dict())
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
    # Exactly what Kimi said before it stopped: nothing invented, nothing lost.
    assert whole.choices[0].message.content == "Echo: mo"
    assert whole.choices[0].finish_reason == "content_filter"
    assert delta_text(chunks) == "Echo: mo"
    assert finish_reasons(chunks) == ["content_filter"]
    # A refused conversation is not kept for a next turn.
    await wait_for(lambda: fake.record.live_conversations() == [])
    assert len(fake.record.deleted_conversations()) == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_length_stop_is_continued_into_one_answer(fake, tmp_path, stream):
    faults(fake, Fault(kind="length", match="completion", after_chars=10, times=1))
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect="legacy") as proxy:
        status, _, lines = await post_raw(
            proxy, {"model": "kimi", "stream": stream, "messages": [user("go on and on")]}
        )
    assert status == 200
    if stream:
        chunks = valid_chunks(data_payloads(lines))
        assert delta_text(chunks) == "Echo: go on and on"
        assert finish_reasons(chunks) == ["stop"]
        assert sum(1 for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]) == 1
    else:
        whole = json.loads("\n".join(lines))
        assert_valid("openai.response", whole)
        assert whole["choices"][0]["message"]["content"] == "Echo: go on and on"
        assert whole["choices"][0]["finish_reason"] == "stop"
    first, follow = fake.record.calls("completion")
    (conversation,) = used_conversations(fake)
    assert follow.json["action"] == "continue"
    assert follow.json["segment_id"] == conversation.segments[0]
    assert first.path == follow.path


async def test_unknown_events_are_ignored(fake, dialect, proxy):
    faults(fake, Fault(kind="unknown_events", match=stream_route(dialect), every=1))
    status, _, lines = await post_raw(proxy, stream_body("noisy upstream"))
    assert status == 200
    chunks = valid_chunks(data_payloads(lines))
    assert delta_text(chunks) == "Echo: noisy upstream"
    assert finish_reasons(chunks) == ["stop"]


async def test_gzip_answer_is_decoded(fake, dialect, proxy):
    faults(fake, Fault(kind="gzip", match=stream_route(dialect)))
    status, _, lines = await post_raw(proxy, stream_body("squeezed"))
    assert status == 200
    chunks = valid_chunks(data_payloads(lines))
    assert delta_text(chunks) == "Echo: squeezed"
    resp = await chat(proxy, "squeezed whole")
    assert resp.json()["choices"][0]["message"]["content"] == "Echo: squeezed whole"


async def test_cut_mid_stream_ends_with_an_error_event(fake, dialect, proxy):
    faults(fake, Fault(kind="cut", match=stream_route(dialect), after_bytes=800))
    status, _, lines = await post_raw(proxy, stream_body(LONG))
    assert status == 200
    payloads = data_payloads(lines)
    chunks = valid_chunks(payloads)
    assert "error" in json.loads(payloads[-2])
    assert chunks[-1]["error"]["code"] == "upstream_disconnected"
    partial = delta_text(chunks[:-1])
    assert partial
    assert ("Echo: " + LONG).startswith(partial)
    assert partial != "Echo: " + LONG

    # The SDK raises while iterating, after the partial answer.
    seen = []

    async def consume(stream) -> None:
        async for chunk in stream:
            seen.append(chunk)

    async with sdk(proxy) as client:
        stream = await client.chat.completions.create(
            model="kimi", stream=True, messages=[user(LONG)]
        )
        with pytest.raises(openai.APIError):
            await consume(stream)
    assert seen

    # Not streamed: a 502 JSON error.
    resp = await chat(proxy, LONG)
    assert resp.status_code == 502
    assert error_body(resp)["code"] == "upstream_disconnected"
    await wait_for(lambda: fake.record.live_conversations() == [])


async def test_error_after_content_is_a_final_error_chunk(fake, dialect, proxy):
    if dialect == "legacy":
        fault = Fault(kind="stream_error", match="completion", after_chars=5)
    else:
        fault = Fault(kind="connect_error", code="unavailable", after_chars=5)
    faults(fake, fault)
    status, _, lines = await post_raw(proxy, stream_body("overloaded"))
    assert status == 200
    chunks = valid_chunks(data_payloads(lines))
    assert delta_text(chunks[:-1]) == "Echo:"
    assert chunks[-1]["error"]["type"]
    assert not finish_reasons(chunks)
    await wait_for(lambda: fake.record.live_conversations() == [])


# --- silence -----------------------------------------------------------------------------------


async def test_keepalive_comments_while_kimi_is_silent(fake, dialect, tmp_path):
    faults(fake, Fault(kind="stall", match=stream_route(dialect), after_bytes=800, seconds=2.5))
    async with running_proxy(
        fake.base_url,
        tmp_path,
        kimi_dialect=dialect,
        keepalive_interval=1,
        precreate_conversations=0,
    ) as proxy:
        status, _, lines = await post_raw(proxy, stream_body(LONG))
    assert status == 200
    keepalives = [i for i, line in enumerate(lines) if line == ": keep-alive"]
    assert len(keepalives) >= 2
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert first_data < keepalives[0]
    chunks = valid_chunks(data_payloads(lines))
    assert chunks[-1]["error"]["code"] == "upstream_disconnected"


@pytest.mark.parametrize("after_bytes", [0, 800], ids=["before_content", "mid_answer"])
async def test_stall_longer_than_the_stall_timeout(fake, dialect, tmp_path, after_bytes):
    faults(
        fake, Fault(kind="stall", match=stream_route(dialect), after_bytes=after_bytes, seconds=10)
    )
    async with running_proxy(
        fake.base_url,
        tmp_path,
        kimi_dialect=dialect,
        keepalive_interval=1,
        stall_timeout=2,
        precreate_conversations=0,
    ) as proxy:
        started = asyncio.get_running_loop().time()
        status, headers, lines = await post_raw(proxy, stream_body(LONG))
        elapsed = asyncio.get_running_loop().time() - started
        if after_bytes == 0:
            assert status == 504
            assert headers["content-type"].startswith("application/json")
            body = json.loads("\n".join(lines))
            assert_valid("openai.error", body)
        else:
            assert status == 200
            chunks = valid_chunks(data_payloads(lines))
            assert chunks[-1]["error"]["code"] == "upstream_stalled"
            assert delta_text(chunks[:-1])
        assert elapsed < 6
        await wait_for(lambda: fake.record.live_conversations() == [])


# --- the client hangs up ---------------------------------------------------------------------


async def test_client_disconnect_deletes_the_conversation(dialect, tmp_path):
    async with (
        FakeKimi(token_rate=20) as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect=dialect, precreate_conversations=0
        ) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        async with http.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json=stream_body(LONG),
            headers={"authorization": f"Bearer {TOKEN}"},
        ) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    break
        # Hung up long before the answer's end (about 10 s at 20 tokens/s).
        await wait_for(lambda: len(fake.record.deleted_conversations()) == 1, timeout=5)
        assert fake.record.live_conversations() == []


# --- slow, empty and heartbeat-only answers ----------------------------------------------------


async def test_slow_refresh_and_dripping_answer_arrive_whole(fake, dialect, proxy):
    faults(
        fake,
        Fault(kind="delay", match="refresh", seconds=0.3),
        Fault(kind="drip", match=stream_route(dialect), seconds=0.002),
    )
    status, _, lines = await post_raw(proxy, stream_body("slowly"))
    assert status == 200
    chunks = valid_chunks(data_payloads(lines))
    assert delta_text(chunks) == "Echo: slowly"
    assert finish_reasons(chunks) == ["stop"]


async def test_empty_done_is_a_transient_error_not_an_empty_answer(fake, dialect, proxy):
    # fixtures/connect/done_without_content: a finished answer without any text is how Kimi's
    # throttling can look; it is a 503 (so another account may try), never an empty "stop".
    faults(fake, Fault(kind="empty_done", match=stream_route(dialect)))
    whole = await chat(proxy, "say nothing")
    assert whole.status_code == 503
    assert error_body(whole)["code"] == "upstream_empty_answer"
    status, _, _ = await post_raw(proxy, stream_body("say nothing"))
    assert status == 503
    await wait_for(lambda: fake.record.live_conversations() == [])


async def test_connect_throttle_after_an_empty_done(fake, tmp_path):
    faults(fake, Fault(kind="empty_done", match="chat", code="resource_exhausted"))
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect="connect") as proxy:
        resp = await chat(proxy)
        assert resp.status_code == 429
        assert error_body(resp)["type"] == "rate_limit_error"
        await wait_for(lambda: fake.record.live_conversations() == [])


async def test_connect_heartbeats_then_close_is_an_error(fake, tmp_path):
    faults(fake, Fault(kind="heartbeat_stall", match="chat", seconds=1.2))
    async with running_proxy(
        fake.base_url, tmp_path, kimi_dialect="connect", keepalive_interval=1
    ) as proxy:
        resp = await chat(proxy, stream=True)
        assert resp.status_code == 502, resp.text
        assert "Echo" not in resp.text
        error_body(resp)
        await wait_for(lambda: fake.record.live_conversations() == [])
