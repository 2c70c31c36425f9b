"""The legacy golden scenarios: Kimi stream bytes → the expected OpenAI output, whole, byte by
byte and at the recorded split points; every chunk and fold validated against the schemas."""

from __future__ import annotations

import json

import pytest

from fixtures.golden import list_scenarios, load_scenario, replay
from tests.schema_check import assert_valid
from translator._errors import RemoteProtocolError
from translator._sse import SSEDecoder
from translator.chat._fold import fold_completion
from translator.legacy._stream import LegacyDecoder

SCENARIOS = list_scenarios("legacy")


def bytewise(body):
    return [body[i : i + 1] for i in range(len(body))]


def at(points):
    def cut(body):
        marks = [p for p in points if 0 < p < len(body)]
        return [body[a:b] for a, b in zip([0, *marks], [*marks, len(body)], strict=True)]

    return cut


def check(result, scenario):
    expected = scenario.expected
    actual = {k: v for k, v in result.items() if k not in {"chunks", "raised"}}
    assert actual == expected
    for chunk in result["chunks"]:
        assert_valid("openai.chunk", chunk)
    if result["error"] is None:
        folded = fold_completion(result["chunks"], prompt_text=scenario.meta["prompt_text"])
        assert_valid("openai.response", folded)
        assert folded["choices"][0]["message"]["content"] == expected["content"]
        assert folded["choices"][0]["finish_reason"] == expected["finish_reason"]
    else:
        assert_valid("openai.error", result["raised"].to_openai())


def test_the_required_scenarios_exist():
    required = {
        "plain_answer",
        "multi_turn",
        "search_results",
        "silent_search",
        "length_stop",
        "moderation_stop",
        "abrupt_end",
        "unknown_events",
        "utf8_split",
        "k1_thinking",
        "rate_limit_error",
        "crlf_line_endings",
        "multiline_data",
    }
    assert required <= set(SCENARIOS)


@pytest.mark.parametrize("name", SCENARIOS)
def test_whole(name):
    scenario = load_scenario(name)
    check(replay(scenario, LegacyDecoder), scenario)


@pytest.mark.parametrize("name", SCENARIOS)
def test_byte_by_byte(name):
    scenario = load_scenario(name)
    check(replay(scenario, LegacyDecoder, bytewise), scenario)


@pytest.mark.parametrize("name", [n for n in SCENARIOS if load_scenario(n).splits])
def test_recorded_splits(name):
    scenario = load_scenario(name)
    assert scenario.splits
    check(replay(scenario, LegacyDecoder, at(scenario.splits)), scenario)


def test_utf8_splits_cut_inside_characters():
    scenario = load_scenario("utf8_split")
    assert scenario.splits
    for point in scenario.splits:
        with pytest.raises(UnicodeDecodeError):
            scenario.upstream[:point].decode("utf-8")


def test_crlf_splits_fall_between_cr_and_lf():
    scenario = load_scenario("crlf_line_endings")
    assert scenario.splits
    assert all(scenario.upstream[p - 1 : p + 1] == b"\r\n" for p in scenario.splits)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_upstream_event_matches_the_kimi_schema(name):
    scenario = load_scenario(name)
    for body in (scenario.upstream, *scenario.continuations):
        dec = SSEDecoder()
        for event in dec.feed(body) + dec.close():
            if event.data.strip() and event.data != "[DONE]":
                assert_valid("kimi.event", json.loads(event.data))


@pytest.mark.parametrize("name", [n for n in SCENARIOS if load_scenario(n).request])
def test_recorded_requests_are_valid_openai_requests(name):
    assert_valid("openai.request", load_scenario(name).request)


def test_replay_reports_errors_from_feed():
    scenario = load_scenario("rate_limit_error")
    result = replay(scenario, LegacyDecoder)
    assert result["error"]["status"] == 429
    assert result["chunks"] == []


def test_error_before_content_is_raised_by_feed_itself():
    scenario = load_scenario("rate_limit_error")
    from translator.chat._response import ResponseTranslator

    t = ResponseTranslator(LegacyDecoder(), **scenario.translator_kwargs)
    with pytest.raises(RemoteProtocolError):
        t.feed(scenario.upstream)
    assert not t.started
