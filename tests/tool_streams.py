"""Kimi bodies of a given answer text (both dialects) and a runner that feeds them through a
ResponseTranslator with an AnswerShaper, for the tool / JSON / stop / max_tokens tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.schema_check import assert_valid
from translator import RemoteProtocolError, plan_chat
from translator.chat._fold import fold_completion
from translator.chat._response import ResponseTranslator
from translator.connect._frames import encode_envelope
from translator.connect._stream import ConnectDecoder
from translator.legacy._stream import LegacyDecoder
from translator.tools._shaper import AnswerShaper

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


def legacy_body(deltas: Sequence[str], *, message_id: str = "seg1") -> bytes:
    events: list[dict[str, Any]] = [
        {"event": "req", "id": "u1"},
        {"event": "resp", "id": message_id},
    ]
    events += [{"event": "cmpl", "text": d, "view": "cmpl"} for d in deltas]
    events.append({"event": "all_done"})
    return b"".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n".encode() for e in events)


def connect_frames(deltas: Sequence[str], *, message_id: str = "m-asst") -> list[bytes]:
    asst = {"id": message_id, "chatId": "c1", "parentId": "m-user", "role": "assistant"}
    frames = [
        {"chat": {"id": "c1", "name": "x"}},
        {
            "message": {
                "id": "m-user",
                "chatId": "c1",
                "role": "user",
                "status": "MESSAGE_STATUS_COMPLETED",
            }
        },
        {"message": asst | {"status": "MESSAGE_STATUS_GENERATING"}},
        {"op": "set", "mask": "block.text", "block": {"id": "text-1", "text": {"content": ""}}},
    ]
    frames += [
        {
            "op": "append",
            "mask": "block.text.content",
            "block": {"id": "text-1", "text": {"content": d}},
        }
        for d in deltas
    ]
    frames += [{"message": asst | {"status": "MESSAGE_STATUS_COMPLETED"}}, {"done": {}}]
    return [encode_envelope(f) for f in frames] + [encode_envelope({}, end_stream=True)]


def connect_body(deltas: Sequence[str], **kwargs: Any) -> bytes:
    return b"".join(connect_frames(deltas, **kwargs))


def request(**extra: Any) -> dict[str, Any]:
    return {
        "model": "kimi",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": TOOLS,
        **extra,
    }


@dataclass
class Run:
    chunks: list[dict[str, Any]] = field(default_factory=list)
    error: RemoteProtocolError | None = None
    repairs: list[str] = field(default_factory=list)
    translator: ResponseTranslator | None = None
    #: how many bytes of each body were fed before the translator said it was cut
    fed: list[int] = field(default_factory=list)

    @property
    def content(self) -> str:
        return "".join(
            (c["choices"][0]["delta"].get("content") or "") for c in self.chunks if c.get("choices")
        )

    @property
    def finish(self) -> str | None:
        reasons = [c["choices"][0]["finish_reason"] for c in self.chunks if c.get("choices")]
        return next((r for r in reversed(reasons) if r), None)

    def folded(self) -> dict[str, Any]:
        body = fold_completion(self.chunks, prompt_text="p")
        assert_valid("openai.response", body)
        return body


def run(
    req: dict[str, Any],
    bodies: Iterable[bytes],
    *,
    dialect: str = "legacy",
    cut: Callable[[bytes], Iterable[bytes]] = lambda b: [b],
    sse: bool = False,
) -> Run:
    """Feed `bodies` (the first answer, then the repair answer) as `cut` splits them."""
    plan = plan_chat(req)
    decoder = LegacyDecoder if dialect == "legacy" else ConnectDecoder
    t = ResponseTranslator(
        decoder(),
        completion_id="chatcmpl-1",
        model="kimi",
        created=1,
        include_usage=True,
        prompt_text=plan.prompt,
        shaper=AnswerShaper.for_plan(plan),
    )
    result = Run(translator=t)
    bodies = list(bodies)
    try:
        for n, body in enumerate(bodies):
            if n:
                assert t.repair_prompt is not None
                result.repairs.append(t.repair_prompt)
                t.begin_repair(decoder())
            fed = 0
            for piece in cut(body):
                if t.cut:
                    break
                fed += len(piece)
                if sse:
                    written = t.feed_sse(piece)
                    result.chunks += _parse_sse(written)
                else:
                    result.chunks += t.feed(piece)
            result.fed.append(fed)
            result.chunks += t.close()
            if t.repair_prompt is None:
                break
    except RemoteProtocolError as err:
        result.error = err
    for chunk in result.chunks:
        assert_valid("openai.chunk", chunk)
    return result


def _parse_sse(data: bytes) -> list[dict[str, Any]]:
    out = []
    for block in data.decode().split("\n\n"):
        if block.startswith("data: "):
            out.append(json.loads(block[6:]))
    return out
