"""The documented usage heuristic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from translator._usage import estimate_tokens, usage_for


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("a", 1),  # 1/4, rounded up
        ("abcd", 1),
        ("abcde", 2),
        ("hello world", 3),  # 11 ASCII characters: 2.75
        ("你好", 2),  # 2 × 2/3 = 1.33
        ("你好，世界！", 4),  # fullwidth punctuation counts as CJK: 6 × 2/3
        ("こんにちは", 4),  # kana: 5 × 2/3 = 3.33
        ("안녕하세요", 4),  # hangul
        ("𠀀", 1),  # CJK extension B
        ("é", 1),  # other: 1/2
        ("🙂🙂", 1),  # other: 2 × 1/2
        ("Привет", 3),  # Cyrillic: 6 × 1/2
        ("abc你", 2),  # 3/4 + 2/3 = 1.42
    ],
)
def test_examples(text, tokens):
    assert estimate_tokens(text) == tokens


@given(st.text(), st.text())
def test_monotone_and_subadditive(a, b):
    whole = estimate_tokens(a + b)
    assert whole >= max(estimate_tokens(a), estimate_tokens(b))
    assert whole <= estimate_tokens(a) + estimate_tokens(b)


@given(st.text(min_size=1))
def test_positive_and_bounded(text):
    assert 1 <= estimate_tokens(text) <= len(text)


def test_usage_for():
    assert usage_for(prompt_text="abcdefgh", completion_text="你好") == {
        "prompt_tokens": 2,
        "completion_tokens": 2,
        "total_tokens": 4,
    }


@given(st.text())
def test_estimate_skips_ascii_runs_but_weighs_every_character(text):
    from translator._usage import token_weight as _weight

    assert estimate_tokens(text) == -(-sum(_weight(ord(ch)) for ch in text) // 12)
    mixed = text + "x" * 1000 + "中"
    assert estimate_tokens(mixed) == -(-sum(_weight(ord(ch)) for ch in mixed) // 12)
