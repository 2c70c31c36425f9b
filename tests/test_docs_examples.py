"""The worked example in docs/translator.md runs, and says what it does."""

from __future__ import annotations

import re
from pathlib import Path

from tests.schema_check import assert_valid

DOC = Path(__file__).resolve().parent.parent / "docs" / "translator.md"
ANSWER = "1. [Py](https://py.org)\n\nOut now [^1^]."


def test_translator_worked_example_runs_as_documented():
    section = DOC.read_text(encoding="utf-8").split("## A worked example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    scope: dict = {}
    exec(compile(code.group(1), str(DOC), "exec"), scope)
    chunks = scope["chunks"]
    for chunk in chunks:
        assert_valid("openai.chunk", chunk)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert (
        chunks[1]["choices"][0]["delta"]["content"] == "1. [Py](https://py.org)\n\nOut now [^1^]."
    )
    finish = chunks[2]["choices"][0]
    assert finish["finish_reason"] == "stop"
    assert finish["delta"]["annotations"][0]["url_citation"] == {
        "url": "https://py.org",
        "title": "Py",
        "start_index": 3,
        "end_index": 23,
    }
    assert chunks[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}
    assert scope["wire"].endswith(b"data: [DONE]\n\n")
    folded = scope["fold_completion"](chunks, prompt_text="Python 3.13?")
    assert_valid("openai.response", folded)
    assert folded["choices"][0]["message"]["content"] == ANSWER
