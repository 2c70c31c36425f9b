"""The legacy dialect's calls: methods, paths, headers, bodies (validated against the schema)."""

from __future__ import annotations

import dataclasses

import pytest

from schemas import schema_errors
from tests.schema_check import assert_valid
from translator._errors import LocalProtocolError
from translator._plan import KimiCall, ModelFlags
from translator.chat._models import K1_AGENT_ID, resolve_model
from translator.legacy._calls import (
    REFRESH_PATH,
    UploadedFile,
    completion_call,
    continuation_call,
    create_conversation_call,
    delete_conversation_call,
    parse_process_call,
    presign_call,
    refresh_token_call,
    register_file_call,
    research_usage_call,
    user_call,
)

CONV = "cq1p2n3d4e5f6g7h8i9j"
DOC = UploadedFile(
    id="cq9file000000000000a",
    name="report.pdf",
    size=1234,
    kind="file",
    detail={"id": "cq9file000000000000a", "name": "report.pdf", "status": "parsed"},
)
IMG = UploadedFile(id="cq9img0000000000000b", name="cat.png", size=99, kind="image")


def test_refresh_and_user_calls_carry_no_token():
    assert refresh_token_call() == KimiCall(method="GET", path=REFRESH_PATH)
    assert REFRESH_PATH == "/api/auth/token/refresh"
    assert refresh_token_call("/custom/refresh").path == "/custom/refresh"
    assert user_call() == KimiCall(method="GET", path="/api/user")
    for call in (refresh_token_call(), user_call()):
        assert not any(name == "authorization" for name, _ in call.headers)


@pytest.mark.parametrize(
    ("model", "kimiplus_id"),
    [("kimi", "kimi"), ("kimi-k1", K1_AGENT_ID), ("0123456789abcdefghij", "0123456789abcdefghij")],
)
def test_create_conversation(model, kimiplus_id):
    call = create_conversation_call(resolve_model(model))
    assert call.method == "POST"
    assert call.path == "/api/chat"
    assert call.json == {
        "name": "未命名会话",
        "is_example": False,
        "enter_method": "new_chat",
        "kimiplus_id": kimiplus_id,
    }
    assert not call.stream


def test_completion_call():
    call = completion_call(
        CONV, prompt="hello", flags=resolve_model("kimi-search-silent"), refs=[DOC, IMG]
    )
    assert call.method == "POST"
    assert call.path == f"/api/chat/{CONV}/completion/stream"
    assert call.stream is True
    assert ("accept-encoding", "identity") in call.headers
    assert all(name == name.lower() for name, _ in call.headers)
    assert call.content is None
    body = call.json
    assert_valid("kimi.completion_request", body)
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert body["refs"] == [DOC.id, IMG.id]
    assert [f["id"] for f in body["refs_file"]] == [DOC.id, IMG.id]
    assert body["refs_file"][0]["file_info"] == dict(DOC.detail)
    assert body["refs_file"][0]["name"] == "report.pdf"
    assert body["refs_file"][0]["size"] == 1234
    assert body["refs_file"][1]["file_info"] == {}
    assert body["use_search"] is True
    assert body["use_research"] is False
    assert body["use_math"] is False
    assert body["kimiplus_id"] == "kimi"
    assert body["extend"] == {"sidebar": True}
    assert "model" not in body


def test_completion_call_names_the_model_when_the_flags_do():
    body = completion_call(CONV, prompt="x", flags=resolve_model("kimi-k1.5")).json
    assert_valid("kimi.completion_request", body)
    assert body["model"] == "k1.5"
    assert body["kimiplus_id"] == "kimi"
    assert body["refs"] == []
    assert body["refs_file"] == []


@pytest.mark.parametrize(
    "flags",
    [ModelFlags(), resolve_model("kimi-research-math"), resolve_model("kimi-k1.5")],
)
def test_continuation_call(flags):
    call = continuation_call(CONV, "seg-123", flags)
    assert call.method == "POST"
    assert call.path == f"/api/chat/{CONV}/completion/stream"
    assert call.stream is True
    assert ("accept-encoding", "identity") in call.headers
    assert_valid("kimi.completion_request", call.json)
    assert call.json["segment_id"] == "seg-123"
    assert call.json["action"] == "continue"
    assert call.json["messages"] == [{"role": "user", "content": " "}]
    assert call.json["kimiplus_id"] == flags.kimiplus_id
    assert call.json["use_research"] is flags.use_research


def test_the_schema_tells_the_two_bodies_apart():
    good = continuation_call(CONV, "seg", ModelFlags()).json
    # a continuation without its action is neither a completion nor a continuation
    broken = {k: v for k, v in good.items() if k != "action"}
    assert schema_errors("kimi.completion_request", broken)
    assert schema_errors("kimi.completion_request", {**good, "surprise": 1})


def test_delete_conversation():
    assert delete_conversation_call(CONV) == KimiCall(method="DELETE", path=f"/api/chat/{CONV}")


@pytest.mark.parametrize(
    "bad", ["", "../user", "a/b", "x?y=1", "abc#frag", "id%2F..", "中文", "a" * 65, "a b"]
)
def test_conversation_ids_cannot_steer_the_path(bad):
    calls = [
        lambda: completion_call(bad, prompt="x", flags=ModelFlags()),
        lambda: continuation_call(bad, "seg", ModelFlags()),
        lambda: delete_conversation_call(bad),
        lambda: register_file_call("file", "a.txt", "obj", "fid", bad),
    ]
    for make in calls:
        with pytest.raises(LocalProtocolError) as info:
            make()
        assert info.value.param == "conversation_id"
        assert info.value.code == "invalid_value"


def test_research_usage():
    assert research_usage_call() == KimiCall(method="GET", path="/api/chat/research/usage")


def test_presign():
    call = presign_call("image", "cat.png", 99)
    assert call == KimiCall(
        method="POST",
        path="/api/pre-sign-url",
        json={"action": "image", "name": "cat.png", "size": 99},
    )


def test_register_file_and_image():
    file_call = register_file_call("file", "a.pdf", "obj/a.pdf", "fid-1", CONV)
    assert file_call.method == "POST"
    assert file_call.path == "/api/file"
    assert file_call.json == {
        "type": "file",
        "name": "a.pdf",
        "object_name": "obj/a.pdf",
        "file_id": "",
        "chat_id": CONV,
    }
    image_call = register_file_call("image", "cat.png", "obj/cat.png", "fid-2", CONV)
    assert image_call.json == {"type": "image", "file_id": "fid-2", "name": "cat.png"}


def test_parse_process():
    call = parse_process_call(("a", "b"))
    assert call == KimiCall(method="POST", path="/api/file/parse_process", json={"ids": ["a", "b"]})
    assert call.stream is False


def test_uploaded_file_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DOC.id = "other"  # type: ignore[misc]
