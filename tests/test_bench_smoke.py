"""The benchmark runs end to end with tiny numbers (in-process proxy) and reports sane values."""

from __future__ import annotations

import pytest

from bench._report import markdown, paired_ratios
from bench.run import BenchConfig, run_bench

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_bench_reports_every_field(tmp_path):
    cfg = BenchConfig(
        concurrency=(1, 3),
        completions=3,
        rtt=0.005,
        token_rate=1000.0,
        proxy_mode="inprocess",
        max_seconds=80.0,
        conversation_ttls=(600, 0),
    )
    result = await run_bench(cfg, workdir=tmp_path)

    assert [(level["concurrency"], level["conversation_ttl"]) for level in result["levels"]] == [
        (1, 600),
        (3, 600),
        (1, 0),
        (3, 0),
    ]
    for level in result["levels"]:
        results = level["results"]
        assert set(results) == {"limit", "sdk", "raw"}
        for kind, res in results.items():
            assert res["completions"] == 3
            assert res["ok"] == 3, res["errors"]
            assert res["errors"] == {}
            for key in ("ttft_ms", "ttfb_ms", "total_ms"):
                assert set(res[key]) == {"p50", "p95", "p99", "mean"}
            assert 0 < res["ttft_ms"]["p50"] <= res["ttft_ms"]["p95"] <= res["ttft_ms"]["p99"]
            # The injected round trip is a floor nobody beats.
            assert res["ttft_ms"]["p50"] >= cfg.rtt * 1000
            assert res["total_ms"]["p50"] >= res["ttft_ms"]["p50"]
            assert res["chunks_per_completion"] > 1
            assert res["chunks_per_s"] > 0
            assert res["cpu_s_per_1k"]["total"] > 0
            assert res["peak_rss_mb"]["total"] > 0
            # the stream, its spare's creation, and with TTL 0 its deletion
            most = 2 if level["conversation_ttl"] or kind == "limit" else 3
            assert 1 <= res["upstream_calls_per_completion"] <= most
            if kind == "limit":
                assert res["upstream_routes"] == {"completion": 3}
                continue
            # The critical path is the stream alone: the spare conversation was pre-created,
            # and the proxy's own per-request counter says so.
            assert res["proxy_logged_requests"] == 3
            # Cleanup deleted each conversation the phase used exactly once: at shutdown with
            # TTL 600, as each reply ended with TTL 0.
            cleanup = res["cleanup"]
            assert cleanup["conversations"] == 3
            assert cleanup["deletes_per_conversation"] == 1.0, cleanup
            assert cleanup["deletes_per_completion"] == 1.0, cleanup
            assert cleanup["deletes_not_2xx"] == 0
            assert cleanup["left_behind"] == 0
            assert res["critical_path_calls_max"] == 1
            assert res["upstream_routes"].get("completion") == 3
            ratios = res["ratio_to_limit"]
            for key in ("ttft_p50", "ttft_p95", "ttft_p99", "total_p50", "chunks_per_s"):
                assert ratios[key] is not None
                assert ratios[key] > 0
            assert isinstance(res["ttft_p50_over_limit_ms"], float)

    assert result["conversations_left_behind"] == 0
    table = markdown(result)
    assert table.count("\n| 1 | 600 | ") == 3
    assert table.count("\n| 3 | 0 | ") == 3
    assert table.count(" | 1.00 (0, 0) |") == 8


def _phase(variant: str, ttl: int, proxy_cpu: float) -> dict[str, object]:
    return {
        "concurrency": 1,
        "conversation_ttl": ttl,
        "variant": variant,
        "results": {
            "limit": {"cpu_s_per_1k": {"total": 9.0}},
            "raw": {"cpu_s_per_1k": {"total": proxy_cpu + 9.0, "proxy_process": proxy_cpu}},
        },
    }


def test_interleaved_phases_are_compared_pair_by_pair():
    # --variants baseline,after,baseline,after,baseline,after with --conversation-ttl 0
    cpu = {"baseline": [40.0, 30.0, 36.0], "after": [18.0, 16.5, 19.8]}
    levels = [_phase(v, 0, cpu[v][n]) for n in range(3) for v in ("baseline", "after")]
    levels.append(_phase("after", 600, 12.0))  # no baseline at this TTL: no pair
    (row,) = paired_ratios({"levels": levels})
    assert row["variant"] == "after"
    assert row["conversation_ttl"] == 0
    assert row["client"] == "raw"
    # each after phase over the baseline phase run next to it, not over a mean of them all
    assert row["ratios"] == [0.45, 0.55, 0.55]
    assert row["median_ratio"] == 0.55
    assert row["baseline_proxy_cpu_s_per_1k"] == [40.0, 30.0, 36.0]


def test_micro_bodies_translate_to_valid_chunks():
    from bench.micro import connect_body, legacy_body, run_micro
    from tests.schema_check import assert_valid
    from translator.chat._response import ResponseTranslator
    from translator.connect._stream import ConnectDecoder
    from translator.legacy._stream import LegacyDecoder

    texts = []
    for body, decoder in ((legacy_body(40), LegacyDecoder()), (connect_body(40), ConnectDecoder())):
        translator = ResponseTranslator(
            decoder, completion_id="cs0bench", model="kimi", created=1764000000, prompt_text="hi"
        )
        chunks = [c for data in body for c in translator.feed(data)] + translator.close()
        for chunk in chunks:
            assert_valid("openai.chunk", chunk)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        texts.append("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks))
    # Both dialects carry the same 40 deltas.
    assert texts[0] == texts[1]
    assert len(texts[0]) >= 40

    result = run_micro(events=40, repeat=1, min_seconds=0.001)
    rows = result["results"]
    assert len(rows) == 13
    assert rows["legacy: stream (feed_sse, with tools)"]["tools_vs_plain"] > 0
    for name, row in rows.items():
        assert row["events_per_s"] > 0
        assert row["input_mb_per_s"] > 0
        assert row["cost_vs_json_loads"] > 0
        assert (row["output_mb_per_s"] is not None) == ("stream (" in name)


async def test_saturation_runs_the_command_with_two_workers(tmp_path):
    from bench._saturation import run_saturation
    from fixtures.fake_kimi import FakeKimi

    async with FakeKimi(dialect_routes="legacy", tls=True, rtt=0.005, token_rate=1000.0) as fake:
        row = await run_saturation(
            fake,
            workers=2,
            concurrency=4,
            completions=8,
            workdir=tmp_path,
            prompt="hello",
            token_prefix="smoke",
        )
        assert row["workers"] == 2
        assert row["processes"] == 3  # the supervisor and its two workers
        assert row["ok"] == row["completions"] == 8
        assert row["completions_per_s"] > 0
        assert row["proxy_cpu_s_per_1k"] > 0
        assert row["exit_status"] == 0  # SIGTERM: both workers stopped the orderly way
        assert fake.record.live_conversations() == []


async def test_rounds_alternate_the_variants_proxies_side_by_side(tmp_path):
    cfg = BenchConfig(
        concurrency=(1,),
        completions=2,
        rtt=0.005,
        token_rate=1000.0,
        max_seconds=100.0,
        kinds=("raw",),
        conversation_ttls=(0,),
        proxy_variants=("after", "unbatched"),
        rounds=2,
    )
    result = await run_bench(cfg, workdir=tmp_path)

    assert [level["variant"] for level in result["levels"]] == [
        "after",
        "unbatched",
        "after",
        "unbatched",
    ]
    for level in result["levels"]:
        raw = level["results"]["raw"]
        assert raw["ok"] == 2, raw["errors"]
        assert raw["cpu_s_per_1k"]["proxy_process"] > 0
        # each phase's conversations deleted once, though both proxies shared the fake
        assert raw["cleanup"]["conversations"] == 2
        assert raw["cleanup"]["deletes_per_conversation"] == 1.0
    # the unbatched proxy writes each event as it comes: more chunks than the gathering one
    chunks = {
        level["variant"]: level["results"]["raw"]["chunks_per_completion"]
        for level in result["levels"]
    }
    assert chunks["unbatched"] > chunks["after"]
    assert result["conversations_left_behind"] == 0
    assert not any("max-seconds" in note for note in result["notes"])
