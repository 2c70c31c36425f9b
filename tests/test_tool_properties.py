"""Properties of tool calls in a stream: for any answer made of prose, examples and calls, and
any split of it into text deltas, network reads (cut anywhere, also inside a UTF-8 character)
and, on the Connect dialect, any envelope boundaries, the calls, the streamed content and the
folded message are those the answer implies, and no call markup ever reaches `content`."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from tests.tool_streams import connect_frames, legacy_body, request, run

PROSE = st.lists(
    st.sampled_from(
        ["a", "b", " ", "\n", "<", ">", "<b>", "<tool_c", "<tool_callx", "<|tool", "é", "你", "😀"]
    ),
    max_size=8,
).map("".join)
CITY = st.text(st.sampled_from('Paris 巴黎"\\\n<>'), min_size=1, max_size=6)


@st.composite
def calls(draw):
    name, args = draw(
        st.one_of(
            st.tuples(st.just("get_weather"), CITY.map(lambda c: {"city": c})),
            st.tuples(st.just("get_time"), st.just({})),
        )
    )
    text = json.dumps(args, ensure_ascii=draw(st.booleans()))
    kind = draw(st.sampled_from(["ours", "hermes", "kimi", "kimi_bare", "string"]))
    markup = {
        "ours": f'<tool_call name="{name}">\n{text}\n</tool_call>',
        "hermes": f'<tool_call>{{"name": "{name}", "arguments": {text}}}</tool_call>',
        "kimi": "<|tool_calls_section_begin|><|tool_call_begin|>"
        f"functions.{name}:0<|tool_call_argument_begin|>{text}<|tool_call_end|>"
        "<|tool_calls_section_end|>",
        "kimi_bare": f"<|tool_call_begin|>{name}<|tool_call_argument_begin|>{text}"
        "<|tool_call_end|>",
        "string": f'<tool_call name="{name}">{json.dumps(text)}</tool_call>',
    }[kind]
    return ("call", markup, (name, json.dumps(args, ensure_ascii=False)))


EXAMPLES = st.sampled_from(
    [
        '\n```\n<tool_call name="get_time">{}</tool_call>\n```\n',
        ' `<tool_call name="get_time">` ',
        " ``<|tool_call_begin|>`` ",
    ]
)


@st.composite
def answers(draw):
    """(segments, expected content, expected calls)."""
    segments = draw(
        st.lists(
            st.one_of(
                PROSE.map(lambda t: ("text", t, None)),
                EXAMPLES.map(lambda t: ("text", t, None)),
                calls(),
            ),
            max_size=6,
        )
    )
    if draw(st.booleans()):
        # an unclosed call of ours at the very end
        segments.append(("call", '<tool_call name="get_time">\n{}', ("get_time", "{}")))
    content: list[str] = []
    expected_calls = []
    for kind, text, call in segments:
        if kind == "call":
            expected_calls.append(call)
        elif not expected_calls:
            content.append(text)
    text = "".join(t for _, t, _ in segments)
    if not text.strip():
        text, content = "x", ["x"]  # an answer without any text is Kimi's throttling (503)
    return text, "".join(content), expected_calls


def cut_at(points):
    def cut(data: bytes):
        marks = sorted({p % (len(data) + 1) for p in points})
        out, last = [], 0
        for mark in marks:
            out.append(data[last:mark])
            last = mark
        out.append(data[last:])
        return out

    return cut


def deltas_of(text: str, sizes: list[int]) -> list[str]:
    out, i, n = [], 0, 0
    while i < len(text):
        size = sizes[n % len(sizes)] if sizes else len(text)
        out.append(text[i : i + size])
        i += size
        n += 1
    return out


def outcome(result):
    assert result.error is None, result.error
    message = result.folded()["choices"][0]["message"]
    calls = [
        (c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or ()
    ]
    return result.content, calls, message, result.finish


def assert_no_markup(content: str) -> None:
    visible = content
    for example_text in (
        '\n```\n<tool_call name="get_time">{}</tool_call>\n```\n',
        ' `<tool_call name="get_time">` ',
        " ``<|tool_call_begin|>`` ",
    ):
        visible = visible.replace(example_text, "")
    assert "<tool_call " not in visible
    assert "<tool_call>" not in visible
    assert "<|tool_call" not in visible


SIZES = st.lists(st.integers(1, 9), min_size=1, max_size=5)
POINTS = st.lists(st.integers(0, 100_000), max_size=12)


@given(answers(), SIZES, POINTS, st.booleans())
@example(('<tool_call name="get_time">{}</tool_call>', "", [("get_time", "{}")]), [1], [], False)
def test_any_split_of_a_legacy_answer(answer, sizes, points, sse):
    text, content, expected_calls = answer
    body = legacy_body(deltas_of(text, sizes))
    whole = outcome(run(request(), [body]))
    split = outcome(run(request(), [body], cut=cut_at(points), sse=sse))
    assert split == whole
    assert whole[0] == content
    assert whole[1] == expected_calls
    assert whole[3] == ("tool_calls" if expected_calls else "stop")
    assert_no_markup(whole[0])


@given(answers(), SIZES, POINTS, st.lists(st.integers(0, 30), max_size=6))
def test_any_split_of_a_connect_answer(answer, sizes, points, joins):
    text, content, expected_calls = answer
    frames = connect_frames(deltas_of(text, sizes))
    # envelopes glued together and cut anywhere: reads never follow envelope boundaries
    body = b"".join(frames)
    whole = outcome(run(request(), [body], dialect="connect"))
    regrouped = []
    for i, frame in enumerate(frames):
        if regrouped and i in joins:
            regrouped[-1] += frame
        else:
            regrouped.append(frame)
    by_frames = outcome(
        run(request(), [body], dialect="connect", cut=lambda _b, r=regrouped: list(r))
    )
    split = outcome(run(request(), [body], dialect="connect", cut=cut_at(points)))
    assert split == whole == by_frames
    assert (whole[0], whole[1]) == (content, expected_calls)
    assert_no_markup(whole[0])


@given(PROSE, st.sampled_from(["STOP", "<tool_call", "é😀", "\n\n"]), SIZES, POINTS)
@example(prose="<tool_callx", stop="<tool_call", sizes=[1], points=[])
def test_stop_strings_are_split_safe(prose, stop, sizes, points):
    text = prose + stop + prose
    body = legacy_body(deltas_of(text, sizes))
    result = run(request(tools=None, stop=[stop]), [body], cut=cut_at(points))
    # (a stop string at the very start gives an empty answer, as OpenAI does)
    assert result.error is None
    assert result.content == text[: text.index(stop)]
    assert result.finish == "stop"
