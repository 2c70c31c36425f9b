"""fold_completion: the stream's chunks → one chat.completion."""

from __future__ import annotations

import pytest

from tests.schema_check import assert_valid
from translator._upstream import Finished, ReasoningDelta, SearchResult, TextDelta
from translator.chat._fold import fold_completion
from translator.chat._response import ResponseTranslator
from translator.legacy._stream import LegacyDecoder


class Script:
    """A decoder that yields prepared events, one list per feed."""

    def __init__(self, *batches):
        self.batches = list(batches)

    def feed(self, data):
        return self.batches.pop(0) if self.batches else []

    def close(self):
        return []


def run(events, **kwargs):
    t = ResponseTranslator(Script(events), completion_id="cid", model="kimi", created=7, **kwargs)
    chunks = t.feed(b"x") + t.close()
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
    return chunks


def test_fold_plain():
    chunks = run([TextDelta(text="Hi"), TextDelta(text=" there"), Finished()])
    folded = fold_completion(chunks, prompt_text="hello")
    assert_valid("openai.response", folded)
    assert folded == {
        "id": "cid",
        "object": "chat.completion",
        "created": 7,
        "model": "kimi",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hi there",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
    }


def test_fold_reasoning_annotations_and_fingerprint():
    chunks = run(
        [
            ReasoningDelta(text="think"),
            SearchResult(title="T", url="https://t/"),
            TextDelta(text="answer"),
            Finished(),
        ],
        silent=True,
        system_fingerprint="fp_kimi",
    )
    folded = fold_completion(chunks, prompt_text="")
    assert_valid("openai.response", folded)
    message = folded["choices"][0]["message"]
    assert message["reasoning_content"] == "think"
    assert message["content"] == "answer"
    assert message["annotations"][0]["url_citation"]["url"] == "https://t/"
    assert folded["system_fingerprint"] == "fp_kimi"
    # completion tokens count content + reasoning
    assert folded["usage"]["completion_tokens"] == 3


def test_fold_uses_the_usage_chunk_when_there_is_one():
    chunks = run([TextDelta(text="abcdefgh"), Finished()], include_usage=True, prompt_text="p")
    assert chunks[-1]["choices"] == []
    folded = fold_completion(chunks, prompt_text="a much longer prompt that is ignored")
    assert (
        folded["usage"]
        == chunks[-1]["usage"]
        == {
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "total_tokens": 3,
        }
    )
    assert_valid("openai.response", folded)


def test_fold_of_a_real_stream():
    body = (
        b'data: {"event":"cmpl","text":"\xe4\xbd\xa0\xe5\xa5\xbd"}\n\ndata: {"event":"length"}\n\n'
    )
    t = ResponseTranslator(LegacyDecoder(), completion_id="c", model="kimi", created=1)
    chunks = t.feed(body) + t.close()
    folded = fold_completion(chunks, prompt_text="")
    assert folded["choices"][0]["message"]["content"] == "你好"
    assert folded["choices"][0]["finish_reason"] == "length"


def test_fold_needs_chunks_and_a_finish():
    with pytest.raises(ValueError, match="at least one chunk"):
        fold_completion([], prompt_text="")
    t = ResponseTranslator(Script([TextDelta(text="x")]), completion_id="c", model="m", created=1)
    with pytest.raises(ValueError, match="before a finish_reason"):
        fold_completion(t.feed(b"."), prompt_text="")
