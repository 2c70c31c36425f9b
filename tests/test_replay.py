"""`kimi-free-api replay`: real mitmproxy flow files (written with mitmproxy's own FlowWriter),
HAR files and fixture folders, run through the translator; the report, the JSON and exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.io import FlowWriter
from mitmproxy.test import tflow

import addon.capture._replay as replay_mod
from addon.capture._replay import NO_BODY_HINT, run_replay
from addon.cli import main
from fixtures.golden import ROOT, list_scenarios, load_scenario
from tests.schema_check import assert_valid

LEGACY_URL = "https://kimi.moonshot.cn/api/chat/{}/completion/stream"
CONNECT_URL = "https://www.kimi.com/apiv2/kimi.gateway.chat.v1.ChatService/Chat"
SSE = "text/event-stream; charset=utf-8"
CONNECT = "application/connect+json"

HELLO = (
    b'data: {"event":"req","id":"seg-1"}\n\n'
    b'data: {"event":"cmpl","text":"Hello"}\n\n'
    b'data: {"event":"cmpl","text":", world"}\n\n'
    b'data: {"event":"all_done"}\n\n'
)


def flow(url: str, body: bytes | None, *, ctype: str = SSE, status: int = 200, req_ctype=None):
    """A finished flow as `mitmdump -w` would store it. `body=None`: a streamed body that was
    not stored (mitmproxy keeps content None then)."""
    headers = {"content-type": req_ctype or "application/json"}
    request = http.Request.make("POST", url, b'{"messages":[]}', headers)
    response = http.Response.make(status, body or b"", {"content-type": ctype})
    if body is None:
        response.content = None
    return tflow.tflow(req=request, resp=response)


def write_flows(path: Path, *flows) -> Path:
    with path.open("wb") as fo:
        writer = FlowWriter(fo)
        for f in flows:
            writer.add(f)
    return path


def replay_json(*paths) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = run_replay([str(p) for p in paths], as_json=True, out=out)
    doc = json.loads(out.getvalue())
    assert doc["exit_code"] == code
    for ex in doc["exchanges"]:
        if ex["error"] is not None:
            assert_valid("openai.error", ex["error"])
    return code, doc


def replay_text(*paths) -> tuple[int, str]:
    out = io.StringIO()
    code = run_replay([str(p) for p in paths], as_json=False, out=out)
    return code, out.getvalue()


# --- flow files -----------------------------------------------------------------------------


def test_legacy_flow_report(tmp_path):
    path = write_flows(tmp_path / "kimi.flows", flow(LEGACY_URL.format("conv1"), HELLO))
    code, doc = replay_json(path)
    assert code == 0
    [ex] = doc["exchanges"]
    assert ex["dialect"] == "legacy"
    assert ex["source"].startswith(f"{path} #0 POST /api/chat/conv1/completion/stream")
    assert ex["events"] == {"MessageId": 1, "TextDelta": 2, "Finished": 1}
    assert ex["unknown"] == []
    assert ex["violations"] == []
    assert (ex["content"], ex["reasoning"], ex["finish_reason"]) == ("Hello, world", "", "stop")
    assert ex["error"] is None
    assert ex["crash"] is None
    assert ex["chunks"] >= 3  # two deltas (the first with the role) and the finish chunk


def test_connect_flow_report(tmp_path):
    scenario = load_scenario("plain", "connect")
    f = flow(CONNECT_URL, scenario.upstream, ctype=CONNECT, req_ctype=CONNECT)
    code, doc = replay_json(write_flows(tmp_path / "c.flows", f))
    assert code == 0
    [ex] = doc["exchanges"]
    assert ex["dialect"] == "connect"
    assert ex["content"] == scenario.expected["text"] == "Hello, world!"
    assert ex["events"]["TextDelta"] == 3
    assert ex["events"]["ConversationStarted"] == 1
    assert ex["finish_reason"] == "stop"


def legacy_scenarios_replayable_as_flows() -> list[str]:
    """Scenarios a flow reproduces: one non-empty body (an empty stored body is reported as a
    capture problem, see test_har_file), and no translator setting a flow cannot carry."""
    names = []
    for name in list_scenarios("legacy"):
        s = load_scenario(name)
        if s.upstream and not (
            s.continuations or s.meta.get("silent") or "max_continuations" in s.meta
        ):
            names.append(name)
    return names


def test_there_are_legacy_scenarios_to_replay():
    assert len(legacy_scenarios_replayable_as_flows()) >= 3


@pytest.mark.parametrize("name", legacy_scenarios_replayable_as_flows())
def test_legacy_fixture_as_flow_matches_golden(tmp_path, name):
    scenario = load_scenario(name)
    expected = scenario.expected
    f = flow(LEGACY_URL.format("convfixture"), scenario.upstream)
    code, doc = replay_json(write_flows(tmp_path / "k.flows", f))
    [ex] = doc["exchanges"]
    assert code == 0, ex["violations"]
    assert ex["content"] == expected["content"]
    assert ex["reasoning"] == expected["reasoning"]
    assert ex["finish_reason"] == expected["finish_reason"]
    assert ex["events"] == expected["event_counts"]
    if expected["error"] is None:
        assert ex["error"] is None
    else:
        assert ex["error"]["error"]["type"] == expected["error"]["type"]
        assert ex["error_status"] == expected["error"]["status"]


def test_only_completion_exchanges_are_picked(tmp_path):
    other = tflow.tflow(resp=True)  # GET http://address:22/path
    user = flow("https://kimi.moonshot.cn/api/user", b"{}", ctype="application/json")
    delete = flow(
        "https://www.kimi.com/apiv2/kimi.chat.v1.ChatService/DeleteChat", b"{}", req_ctype=CONNECT
    )
    scenario = load_scenario("plain", "connect")
    connect = flow(CONNECT_URL, scenario.upstream, ctype=CONNECT, req_ctype=CONNECT)
    legacy = flow(LEGACY_URL.format("c2") + "?x=1", HELLO)
    path = write_flows(tmp_path / "mixed.flows", other, user, legacy, delete, connect)
    code, doc = replay_json(path)
    assert code == 0
    assert [(e["source"].split(" ")[1], e["dialect"]) for e in doc["exchanges"]] == [
        ("#2", "legacy"),
        ("#4", "connect"),
    ]
    assert doc["inputs"] == [{"path": str(path), "exchanges": 2}]


def test_broken_stream_is_reported_as_the_mapped_error(tmp_path):
    body = b'data: {"event":"cmpl","text":"Par"}\n\ndata: this is not json\n\n'
    code, doc = replay_json(write_flows(tmp_path / "b.flows", flow(LEGACY_URL.format("c"), body)))
    assert code == 0  # an error the translator maps is a normal outcome, not a violation
    [ex] = doc["exchanges"]
    assert ex["crash"] is None
    assert ex["violations"] == []
    assert ex["error_status"] == 502
    assert ex["error"]["error"]["type"] == "upstream_error"
    assert "not JSON" in ex["error"]["error"]["message"]
    assert ex["content"] == "Par"  # what the client had already received
    assert ex["finish_reason"] is None


def test_kimi_http_error_is_reported(tmp_path):
    body = json.dumps({"error_type": "auth.token.invalid", "message": "expired"}).encode()
    f = flow(LEGACY_URL.format("c"), body, ctype="application/json", status=401)
    code, doc = replay_json(write_flows(tmp_path / "e.flows", f))
    assert code == 0
    [ex] = doc["exchanges"]
    assert ex["error_status"] == 401
    assert ex["error"]["error"]["type"] == "authentication_error"
    assert ex["events"] == {}


def test_unknown_events_are_listed_with_a_sample(tmp_path):
    body = HELLO.replace(
        b'data: {"event":"all_done"}',
        b'data: {"event":"brand_new","x":1}\n\ndata: {"event":"all_done"}',
    )
    code, doc = replay_json(write_flows(tmp_path / "u.flows", flow(LEGACY_URL.format("c"), body)))
    assert code == 0
    [ex] = doc["exchanges"]
    [unknown] = ex["unknown"]
    assert unknown["kind"] == "brand_new"
    assert unknown["count"] == 1
    assert '"x":1' in unknown["sample"].replace(" ", "")
    assert ex["events"]["Unknown:brand_new"] == 1
    _, text = replay_text(tmp_path / "u.flows")
    assert "unknown: brand_new x1" in text


def test_flow_without_stored_body_gets_the_hint(tmp_path):
    path = write_flows(tmp_path / "s.flows", flow(LEGACY_URL.format("c"), None))
    code, doc = replay_json(path)
    assert code == 0
    [ex] = doc["exchanges"]
    assert ex["note"] == NO_BODY_HINT
    assert ex["events"] == {}
    assert ex["chunks"] == 0
    assert doc["summary"]["without_body"] == 1
    code, text = replay_text(path)
    assert code == 0
    assert "no body stored" in text
    assert "store_streamed_bodies=true" in text


def test_flow_without_response(tmp_path):
    f = tflow.tflow(req=http.Request.make("POST", LEGACY_URL.format("c"), b"{}"), err=True)
    code, doc = replay_json(write_flows(tmp_path / "n.flows", f))
    assert code == 0
    assert doc["exchanges"][0]["note"].startswith("no response (error)")


def test_har_file(tmp_path):
    entry = {
        "startedDateTime": "2025-01-01T00:00:00Z",
        "time": 10,
        "request": {
            "method": "POST",
            "url": LEGACY_URL.format("harconv"),
            "httpVersion": "HTTP/1.1",
            "headers": [{"name": "content-type", "value": "application/json"}],
            "postData": {"text": "{}"},
        },
        "response": {
            "status": 200,
            "httpVersion": "HTTP/1.1",
            "headers": [{"name": "content-type", "value": SSE}],
            "content": {"text": HELLO.decode()},
        },
    }
    empty = json.loads(json.dumps(entry))
    empty["response"]["content"] = {}  # what a browser export often holds for a stream
    path = tmp_path / "kimi.har"
    path.write_text(json.dumps({"log": {"entries": [entry, empty]}}))
    code, doc = replay_json(path)
    assert code == 0
    first, second = doc["exchanges"]
    assert first["content"] == "Hello, world"
    assert second["note"].startswith("empty body stored")


def test_several_files_and_text_report(tmp_path):
    a = write_flows(tmp_path / "a.flows", flow(LEGACY_URL.format("a"), HELLO))
    b = write_flows(tmp_path / "b.flows", tflow.tflow(resp=True))
    code, text = replay_text(a, b)
    assert code == 0
    assert f"== {a} #0 POST /api/chat/a/completion/stream [legacy]" in text
    assert "events: Finished=1, MessageId=1, TextDelta=2" in text
    assert "content: Hello, world" in text
    assert "finish_reason: stop" in text
    assert f"{b}: no Kimi completion exchange found" in text
    assert text.rstrip().splitlines()[-1].startswith("== 1 exchange(s): 0 violation(s), 0 crash")


# --- fixture folders ------------------------------------------------------------------------


def test_one_fixture_folder():
    code, doc = replay_json(ROOT / "connect" / "thinking")
    assert code == 0
    [ex] = doc["exchanges"]
    expected = load_scenario("thinking", "connect").expected
    assert (ex["content"], ex["reasoning"]) == (expected["text"], expected["reasoning"])
    assert ex["source"] == str(ROOT / "connect" / "thinking")


@pytest.mark.parametrize(("folder", "dialect"), [("kimi", "legacy"), ("connect", "connect")])
def test_whole_fixture_tree(folder, dialect):
    code, doc = replay_json(ROOT / folder)
    names = list_scenarios(dialect)
    assert code == 0, [e["violations"] for e in doc["exchanges"] if e["violations"]]
    assert [Path(e["source"]).name for e in doc["exchanges"]] == names
    assert {e["dialect"] for e in doc["exchanges"]} == {dialect}
    for ex in doc["exchanges"]:
        assert ex["crash"] is None
        expected = load_scenario(Path(ex["source"]).name, dialect).expected
        if dialect == "legacy":
            # meta.json's translator settings and continuation bodies are honoured
            assert ex["content"] == expected["content"], ex["source"]
            assert ex["finish_reason"] == expected["finish_reason"], ex["source"]
        elif expected["search_results"]:
            # the citation list the proxy writes before the answer is not in the decoder's text
            assert ex["content"].endswith(expected["text"]), ex["source"]
        else:
            assert ex["content"] == expected["text"], ex["source"]


def test_whole_fixtures_root_has_both_dialects():
    code, doc = replay_json(ROOT)
    assert code == 0
    count = len(list_scenarios("legacy")) + len(list_scenarios("connect"))
    assert doc["summary"]["exchanges"] == count


# --- failures and exit codes ----------------------------------------------------------------


def test_unreadable_inputs_exit_2(tmp_path):
    good = write_flows(tmp_path / "g.flows", flow(LEGACY_URL.format("g"), HELLO))
    garbage = tmp_path / "garbage.flows"
    garbage.write_bytes(b"this is not a flow file")
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    missing = tmp_path / "missing.flows"
    code, doc = replay_json(good, garbage, empty_dir, missing)
    assert code == 2
    assert len(doc["unreadable"]) == 3
    assert doc["summary"]["exchanges"] == 1  # the readable input is still reported
    code, text = replay_text(missing)
    assert code == 2
    assert text.startswith(f"cannot read {missing}")


def test_schema_violation_exits_1(tmp_path, monkeypatch):
    real = replay_mod.ResponseTranslator

    class Sloppy(real):
        def feed(self, data):
            return [{k: v for k, v in c.items() if k != "object"} for c in super().feed(data)]

    monkeypatch.setattr(replay_mod, "ResponseTranslator", Sloppy)
    code, doc = replay_json(write_flows(tmp_path / "v.flows", flow(LEGACY_URL.format("c"), HELLO)))
    assert code == 1
    violations = doc["exchanges"][0]["violations"]
    assert any(v.startswith("chunk 0:") and "object" in v for v in violations)
    assert doc["summary"]["violations"] == len(violations)


def test_translator_crash_exits_1(tmp_path, monkeypatch):
    class Broken:
        def feed(self, data):
            raise KeyError("boom")

        def close(self):
            return []

    monkeypatch.setattr(replay_mod, "LegacyDecoder", Broken)
    code, text = replay_text(write_flows(tmp_path / "x.flows", flow(LEGACY_URL.format("c"), HELLO)))
    assert code == 1
    assert "CRASH: KeyError: 'boom'" in text


def test_json_output_fields(tmp_path):
    code, doc = replay_json(write_flows(tmp_path / "j.flows", flow(LEGACY_URL.format("j"), HELLO)))
    assert code == 0
    assert set(doc) == {"exit_code", "inputs", "unreadable", "exchanges", "summary"}
    assert set(doc["exchanges"][0]) >= {
        "source", "dialect", "note", "events", "unknown", "chunks", "violations",
        "error", "error_status", "crash", "content", "reasoning", "finish_reason",
        "unknown_fields", "kimi_messages",
    }  # fmt: skip
    assert doc["summary"] == {
        "exchanges": 1, "violations": 0, "crashes": 0, "errors": 0,
        "without_body": 0, "unknown_kinds": 0, "unknown_fields": 0, "unreadable": 0,
    }  # fmt: skip


# --- through the command line ---------------------------------------------------------------


def test_cli_replay_text(tmp_path, capsys):
    path = write_flows(tmp_path / "cli.flows", flow(LEGACY_URL.format("cli"), HELLO))
    assert main(["replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert "content: Hello, world" in out


def test_cli_replay_json_and_exit_2(tmp_path, capsys):
    path = write_flows(tmp_path / "cli.flows", flow(LEGACY_URL.format("cli"), HELLO))
    assert main(["replay", "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["exchanges"][0]["content"] == "Hello, world"
    assert main(["replay", str(tmp_path / "nope.flows")]) == 2
    assert "cannot read" in capsys.readouterr().out


def test_fold_that_disagrees_with_the_stream_exits_1(tmp_path, monkeypatch):
    real = replay_mod.fold_completion

    def lying_fold(chunks, *, prompt_text):
        folded = real(chunks, prompt_text=prompt_text)
        folded["choices"][0]["message"]["content"] += "!"
        return folded

    monkeypatch.setattr(replay_mod, "fold_completion", lying_fold)
    code, doc = replay_json(write_flows(tmp_path / "f.flows", flow(LEGACY_URL.format("c"), HELLO)))
    assert code == 1
    assert doc["exchanges"][0]["violations"] == [
        "fold: message.content differs from the streamed content"
    ]


def test_length_stop_in_a_flow_is_noted_and_fixture_continuations_are_fed(tmp_path):
    scenario = load_scenario("length_stop")
    assert scenario.continuations  # the folder has the continuation body
    path = write_flows(tmp_path / "l.flows", flow(LEGACY_URL.format("c"), scenario.upstream))
    code, doc = replay_json(path, ROOT / "kimi" / "length_stop")
    assert code == 0
    as_flow, as_folder = doc["exchanges"]
    assert as_flow["note"].startswith("stopped at Kimi's length limit")
    assert as_flow["finish_reason"] == "length"
    assert as_folder["note"] == ""
    assert as_folder["content"] == scenario.expected["content"]
    assert as_folder["events"]["continuation"] == 1
    assert as_flow["content"] != as_folder["content"]
