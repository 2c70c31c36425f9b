"""The Connect fixtures end to end: ConnectDecoder → ResponseTranslator → OpenAI chunks."""

from __future__ import annotations

import json

import pytest

from tests.schema_check import assert_valid
from tests.test_connect_stream import FIXTURES, SCENARIOS, load_fixture
from translator import RemoteProtocolError
from translator.chat._response import ResponseTranslator
from translator.connect._stream import ConnectDecoder

CREATED = 1_700_000_000


def run(data: bytes, cuts=(), *, silent: bool = True):
    """Feed `data` at `cuts`; return (translator, chunks, error or None)."""
    translator = ResponseTranslator(
        ConnectDecoder(), completion_id=None, model="kimi-k2", created=CREATED, silent=silent
    )
    chunks: list[dict] = []
    start = 0
    try:
        for cut in [*cuts, len(data)]:
            chunks += translator.feed(data[start:cut])
            start = cut
        chunks += translator.close()
    except RemoteProtocolError as exc:
        return translator, chunks, exc
    return translator, chunks, None


def fold(chunks) -> dict:
    content = reasoning = ""
    finish = []
    annotations = []
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            annotations += delta.get("annotations") or []
            if choice["finish_reason"] is not None:
                finish.append(choice["finish_reason"])
    return {
        "content": content,
        "reasoning": reasoning,
        "finish": finish,
        "annotations": annotations,
    }


def cut_sets(name: str, size: int):
    yield "whole", ()
    yield "bytewise", range(1, size)
    splits = FIXTURES / name / "splits.json"
    if splits.exists():
        yield "recorded", json.loads(splits.read_text())


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden(name):
    data, _, expected = load_fixture(name)
    results = []
    for how, cuts in cut_sets(name, len(data)):
        translator, chunks, error = run(data, cuts)
        folded = fold(chunks)
        results.append((folded, None if error is None else (error.status, error.code)))
        assert folded["content"] == expected["text"], how
        assert folded["reasoning"] == expected["reasoning"], how
        assert {c["id"] for c in chunks} <= {expected["conversation_id"]}, how
        assert translator.conversation_id == expected["conversation_id"]
        assert [a["url_citation"]["url"] for a in folded["annotations"]] == [
            r["url"] for r in expected["search_results"]
        ]
        for kind, count in expected["noise"].items():
            assert translator.event_counts[f"Noise:{kind}"] == count
        for kind in expected["unknown"]:
            assert translator.event_counts[f"Unknown:{kind}"] >= 1
        # `failure`: an error the decoder reports; `answer_error`: one the translator raises
        # on an answer that the decoder read cleanly (e.g. no text at all).
        failure = expected["failure"] or expected.get("answer_error")
        if failure is not None:
            assert error is not None, how
            assert (error.status, error.type, error.code) == (
                failure["status"],
                failure["type"],
                failure["code"],
            )
            assert failure["message_contains"] in error.message
            assert_valid("openai.error", translator.error_chunk(error))
            assert folded["finish"] == []
            assert translator.started == bool(expected["text"])
        else:
            assert error is None, (how, error)
            reason = "content_filter" if expected["content_filtered"] else "stop"
            assert folded["finish"] == [reason], how
    # chunk boundaries aside, every way of cutting the body gives the same answer
    assert all(r == results[0] for r in results)


def test_search_citations_in_the_text_when_not_silent():
    data, _, expected = load_fixture("search")
    _, chunks, error = run(data, silent=False)
    assert error is None
    folded = fold(chunks)
    for result in expected["search_results"]:
        assert result["url"] in folded["content"]
    assert expected["text"] in folded["content"]
    assert folded["finish"] == ["stop"]
