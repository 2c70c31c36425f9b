"""Real exchanges become fixtures: the proxy's own Kimi calls, recorded through mitmproxy
(`record_upstream`, and `-w` via mitmproxy's save addon), replay with `kimi-free-api replay`
for both dialects, without a token anywhere in the recording."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.io import FlowReader

from addon.capture._replay import run_replay
from addon.cli import main as cli_main
from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy
from tests.test_e2e_dialects import sdk, user, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def read_flows(path: Path) -> list[http.HTTPFlow]:
    with path.open("rb") as fo:
        return [f for f in FlowReader(fo).stream() if isinstance(f, http.HTTPFlow)]


def replay(path: Path) -> tuple[int, dict]:
    out = io.StringIO()
    code = run_replay([str(path)], as_json=True, out=out)
    return code, json.loads(out.getvalue())


async def record_chats(fake: FakeKimi, tmp_path: Path, dialect: str, models: list[str]):
    record, saved = tmp_path / "kimi.flows", tmp_path / "all.flows"
    async with running_proxy(
        fake.base_url,
        tmp_path,
        kimi_dialect=dialect,
        record_upstream=str(record),
        save_stream_file=str(saved),  # what `mitmdump -w all.flows` sets
        conversation_ttl=0,
        precreate_conversations=0,
    ) as proxy:
        async with sdk(proxy) as client:
            for n, model in enumerate(models):
                stream = await client.chat.completions.create(
                    model=model, stream=True, messages=[user(f"question {n}")]
                )
                async for _ in stream:
                    pass
        await wait_for(lambda: len(fake.record.deleted_conversations()) == len(models))
    return record, saved


@pytest.mark.parametrize("dialect", ["legacy", "connect"])
async def test_recorded_upstream_flows_replay_with_zero_violations(dialect, tmp_path):
    async with FakeKimi() as fake:
        record, saved = await record_chats(fake, tmp_path, dialect, ["kimi", "kimi-search"])
        tokens = fake.issued_tokens()
    flows = read_flows(record)
    paths = [f.request.path for f in flows]
    # every Kimi call is its own flow: the refresh, the answers and the deletions
    assert any("/auth/token/refresh" in p for p in paths), paths
    assert sum(("completion/stream" in p) or p.endswith("ChatService/Chat") for p in paths) == 2
    assert sum("DeleteChat" in f.request.path or f.request.method == "DELETE" for f in flows) == 2
    assert all(f.metadata["kimi_free_api"] == "upstream" for f in flows)
    assert all(f.request.host == "127.0.0.1" and f.response is not None for f in flows)
    # the same flows went into the -w file, beside the client's own flows
    everything = read_flows(saved)
    upstream = [f for f in everything if f.metadata.get("kimi_free_api") == "upstream"]
    assert [f.request.path for f in upstream] == paths
    clients = [f for f in everything if f.request.path == "/v1/chat/completions"]
    assert len(clients) == 2
    for client in clients:
        # shown as what the client called (not the loopback relay), with the streamed body
        assert client.request.host == "127.0.0.1"
        assert client.request.port != client.server_conn.address[1]
        assert client.response is not None
        assert client.response.content is not None
        assert b"data: [DONE]" in client.response.content
    # no token the fake ever issued or accepted is in the upstream recording
    data = record.read_bytes()
    upstream_states = repr([f.get_state() for f in upstream]).encode()
    assert tokens
    for token in tokens:
        assert token.encode() not in data, token[:12]
        assert token.encode() not in upstream_states, token[:12]
    assert b"REDACTED" in data
    # and it replays: both answers, nothing unknown, nothing invalid
    for path in (record, saved):
        code, report = replay(path)
        assert code == 0, report
        summary = report["summary"]
        assert summary["exchanges"] == 2
        assert (summary["violations"], summary["crashes"], summary["errors"]) == (0, 0, 0)
        assert (summary["unknown_kinds"], summary["unknown_fields"]) == (0, 0), report
        contents = [e["content"] for e in report["exchanges"]]
        assert "Echo: question 0" in contents[0]
        assert report["exchanges"][0]["kimi_messages"] > 3


@pytest.mark.parametrize("dialect", ["legacy", "connect"])
async def test_an_unknown_event_kind_is_named_by_the_report(dialect, tmp_path):
    route = "completion" if dialect == "legacy" else "chat"
    noisy = Fault(kind="unknown_events", match=route, every=2, kinds=("zz_future_event",))
    async with FakeKimi(scenario=Scenario.of(noisy)) as fake:
        record, _ = await record_chats(fake, tmp_path, dialect, ["kimi"])
    code, report = replay(record)
    assert code == 0  # unknown kinds are news, not failures
    [exchange] = report["exchanges"]
    assert [u["kind"] for u in exchange["unknown"]] == ["zz_future_event"]
    assert exchange["content"].startswith("Echo: question 0")
    out = io.StringIO()
    run_replay([str(record)], as_json=False, out=out)
    assert "unknown: zz_future_event" in out.getvalue()


@pytest.mark.parametrize("dialect", ["legacy", "connect"])
async def test_a_recording_becomes_a_golden_fixture(dialect, tmp_path):
    from addon.capture._save_fixture import DRAFT, save_fixtures
    from fixtures.golden import Scenario as Golden
    from fixtures.golden import replay as golden_replay
    from tests.test_connect_stream import assert_matches, decode, normalise
    from tests.test_golden_legacy import bytewise, check
    from translator.legacy._stream import LegacyDecoder

    async with FakeKimi() as fake:
        record, _ = await record_chats(fake, tmp_path, dialect, ["kimi-search"])
    folder = tmp_path / "fixtures" / "captured_case"
    # the command as docs/testing.md shows it
    assert cli_main(["replay", "--save-fixture", str(folder), str(record)]) == 0
    assert save_fixtures([str(record)], str(folder), out=io.StringIO()) == 2  # never overwrites
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    assert meta["source"].startswith("captured")
    assert meta["expected"] == DRAFT
    if dialect == "connect":
        body = (folder / "upstream.bin").read_bytes()
        assert expected["text"] == "Echo: question 0"
        assert len(expected["search_results"]) == 2
        for cuts in ((), range(1, len(body))):
            assert_matches(normalise(decode(body, cuts)), expected)
    else:
        body = (folder / "upstream.sse").read_bytes()
        golden = Golden(
            name="captured_case", dialect="legacy", upstream=body, meta=meta, expected=expected
        )
        assert "Echo: question 0" in expected["content"]
        assert len(expected["annotations"]) == 2
        check(golden_replay(golden, LegacyDecoder), golden)
        check(golden_replay(golden, LegacyDecoder, bytewise), golden)
    # and the folder replays like any other fixture
    code, report = replay(folder)
    assert code == 0
    assert report["summary"]["exchanges"] == 1
