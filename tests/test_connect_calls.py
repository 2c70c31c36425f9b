from __future__ import annotations

import json

import pytest

from tests.schema_check import assert_valid
from translator import ChatPlan, LocalProtocolError, ModelFlags, RemoteProtocolError
from translator.connect._calls import (
    CHAT_SERVICE,
    DELETE_CHAT_SERVICES,
    chat_call,
    delete_chat_call,
    delete_outcome,
    session_headers,
    validate_chat_id,
)
from translator.connect._frames import EnvelopeDecoder
from translator.connect._jwt import JwtClaims


def plan(prompt="你好 🌏", **flags) -> ChatPlan:
    return ChatPlan(model="kimi", flags=ModelFlags(**flags), prompt=prompt, files=(), messages=())


def payload_of(call) -> dict:
    decoder = EnvelopeDecoder()
    (envelope,) = decoder.feed(call.content)
    decoder.close()
    assert envelope.flags == 0
    body = json.loads(envelope.payload)
    assert_valid("kimi.connect_request", body)
    return body


def test_new_chat_call():
    call = chat_call(plan())
    assert call.method == "POST"
    assert call.path == "/apiv2/kimi.gateway.chat.v1.ChatService/Chat"
    assert call.stream is True
    assert call.json is None
    assert dict(call.headers) == {
        "content-type": "application/connect+json",
        "connect-protocol-version": "1",
        "x-msh-version": "2.0.0",
        "accept-encoding": "identity",
    }
    assert all(name == name.lower() for name, _ in call.headers)
    assert payload_of(call) == {
        "scenario": "SCENARIO_K2D5",
        "message": {
            "role": "user",
            "scenario": "SCENARIO_K2D5",
            "blocks": [{"message_id": "", "text": {"content": "你好 🌏"}}],
        },
        "options": {"thinking": False},
    }
    # compact UTF-8 JSON, non-ASCII as is
    assert "你好 🌏".encode() in call.content
    assert b": " not in call.content


def test_continued_chat_with_search_thinking_and_files():
    call = chat_call(
        plan(prompt="next", use_search=True, thinking=True, scenario="SCENARIO_K2D6"),
        chat_id="d3kimichat0001",
        parent_id="a-0001",
        file_ids=["f1", "f_2"],
    )
    body = payload_of(call)
    assert body["chat_id"] == "d3kimichat0001"
    assert body["tools"] == [{"type": "TOOL_TYPE_SEARCH", "search": {}}]
    assert body["options"] == {"thinking": True}
    assert body["scenario"] == body["message"]["scenario"] == "SCENARIO_K2D6"
    assert body["message"]["parent_id"] == "a-0001"
    assert body["message"]["blocks"][1:] == [{"file": {"id": "f1"}}, {"file": {"id": "f_2"}}]
    assert "kimiplus_id" not in body


def test_a_catalog_model_id_goes_into_the_options():
    body = payload_of(chat_call(plan(model="k2d6-chat", thinking=True)))
    assert body["options"] == {"thinking": True, "model": "k2d6-chat"}


def test_agent_flags_name_the_agent():
    flags = {
        "scenario": "SCENARIO_OK_COMPUTER",
        "kimiplus_id": "ok-computer",
        "agent_mode": "TYPE_NORMAL",
    }
    body = payload_of(chat_call(plan(**flags)))
    assert body["kimiplus_id"] == "ok-computer"
    assert body["agent_mode"] == "TYPE_NORMAL"


def test_service_is_configurable():
    call = chat_call(plan(), service="kimi.chat.v1.ChatService")
    assert call.path == "/apiv2/kimi.chat.v1.ChatService/Chat"
    assert CHAT_SERVICE in chat_call(plan()).path


@pytest.mark.parametrize("bad", ["../x", "a/b", 'a"b', "a b", "a\nb", "x" * 129, "é", "a.b", "%2e"])
def test_client_chat_ids_are_validated(bad):
    with pytest.raises(LocalProtocolError) as info:
        chat_call(plan(), chat_id=bad)
    assert info.value.param == "conversation_id"
    assert info.value.status == 400
    with pytest.raises(LocalProtocolError):
        chat_call(plan(), chat_id="ok", parent_id=bad)
    with pytest.raises(LocalProtocolError):
        delete_chat_call(bad)


def test_validate_chat_id():
    assert validate_chat_id("d3k-_9" * 3) == "d3k-_9" * 3
    with pytest.raises(LocalProtocolError) as info:
        validate_chat_id("", param="chat_id")
    assert info.value.param == "chat_id"


def test_bad_file_id_is_kimis_fault():
    with pytest.raises(RemoteProtocolError):
        chat_call(plan(), file_ids=["../etc"])


@pytest.mark.parametrize("bad", ["", "Chat", "a/b.C", "a..b", "a.b/Chat", ".a.b"])
def test_bad_service_names(bad):
    with pytest.raises(LocalProtocolError) as info:
        chat_call(plan(), service=bad)
    assert info.value.param == "service"
    with pytest.raises(LocalProtocolError):
        delete_chat_call("abc", service=bad)


def test_delete_chat_call():
    call = delete_chat_call("d3kimichat0001")
    # the service the most complete live-verified client uses comes first
    assert DELETE_CHAT_SERVICES == ("kimi.gateway.chat.v1.ChatService", "kimi.chat.v1.ChatService")
    assert call.path == "/apiv2/kimi.gateway.chat.v1.ChatService/DeleteChat"
    assert call.json == {"chat_id": "d3kimichat0001"}
    assert call.content is None
    assert call.stream is False
    assert dict(call.headers) == {
        "content-type": "application/json",
        "connect-protocol-version": "1",
        "x-msh-version": "2.0.0",
    }
    other = delete_chat_call("x1", service="kimi.chat.v1.ChatService")
    assert other.path == "/apiv2/kimi.chat.v1.ChatService/DeleteChat"


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b"{}", "deleted"),
        (204, b"", "deleted"),
        (404, b'{"code": "not_found", "message": "chat not found"}', "gone"),
        (404, b"404 page not found\n", "missing"),
        (404, b"", "missing"),
        (404, b'{"code": "unimplemented"}', "missing"),
        (501, b'{"code": "unimplemented", "message": "no"}', "missing"),
        (404, b"[1]", "missing"),
        (404, b"[" * 100_000, "missing"),
        (401, b'{"code": "unauthenticated"}', "error"),
        (500, b"oops", "error"),
        (400, b'{"code": "not_found"}', "gone"),
    ],
)
def test_delete_outcome(status, body, outcome):
    assert delete_outcome(status, body) == outcome


def test_session_headers_from_claims():
    claims = JwtClaims(sub="csdjof", ssid="173108", device_id="765180", exp=1)
    assert session_headers(claims, timezone="Asia/Shanghai", language="zh-CN") == (
        ("x-traffic-id", "csdjof"),
        ("x-msh-session-id", "173108"),
        ("x-msh-device-id", "765180"),
        ("x-msh-platform", "web"),
        ("x-msh-version", "2.0.0"),
        ("r-timezone", "Asia/Shanghai"),
        ("x-language", "zh-CN"),
    )


def test_session_headers_skip_missing_claims():
    headers = session_headers(JwtClaims(sub="u"), timezone="UTC", version="1.0.0")
    assert dict(headers) == {
        "x-traffic-id": "u",
        "x-msh-platform": "web",
        "x-msh-version": "1.0.0",
        "r-timezone": "UTC",
    }


@pytest.mark.parametrize("bad", ["a\r\nx-evil: 1", "a b", "", "é"])
def test_session_headers_refuse_injection(bad):
    with pytest.raises(RemoteProtocolError) as info:
        session_headers(JwtClaims(device_id=bad), timezone="UTC")
    assert info.value.status == 401
    for kwargs in (
        {"timezone": bad},
        {"timezone": "UTC", "version": bad},
        {"timezone": "UTC", "language": bad},
    ):
        with pytest.raises(LocalProtocolError):
            session_headers(JwtClaims(), **kwargs)
