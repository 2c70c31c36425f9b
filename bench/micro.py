"""The translator alone, on one core: `python -m bench.micro [--events N] [--seconds S]`.

Kimi events → OpenAI SSE bytes per second (ResponseTranslator(LegacyDecoder()) + encode_sse per
chunk, and the same bytes from `feed_sse`/`close_sse`),
the same for the non-stream fold (fold_completion of those chunks), and the Connect decoder
path. The "with tools" rows stream the same prose followed by one tool call (split into 4-character
deltas) with tools declared, so every text delta goes through the tool-call parser;
`tools_vs_plain` is their cost per event over the plain `feed_sse` row (docs/tools.md: at most
1.5). Each workload is timed against baselines from the same run: json.loads of the same event
payloads (the floor for anything that parses JSON) and the WHATWG SSE decoder alone. Bodies are
fed one network read per event, as a server that flushes per event delivers them. CPU time
(time.process_time), best of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from translator import plan_chat
from translator._sse import SSE_DONE, SSEDecoder, encode_sse
from translator.chat._fold import fold_completion
from translator.chat._response import ResponseTranslator
from translator.connect._frames import encode_envelope
from translator.connect._stream import ConnectDecoder
from translator.legacy._stream import LegacyDecoder
from translator.tools._shaper import AnswerShaper

__all__ = ["connect_body", "legacy_body", "main", "run_micro"]

RESULTS = Path(__file__).resolve().parent / "results"
_TEXT = "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。 "
_CALL = '\n<tool_call name="get_weather">\n{"city": "Paris"}\n</tool_call>'
_CALL_DELTAS = [_CALL[i : i + 4] for i in range(0, len(_CALL), 4)]
_TOOLS_PLAN = plan_chat(
    {
        "model": "kimi",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
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
            }
        ],
    }
)


def _deltas(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out, pos = [], 0
    for _ in range(count):
        n = rng.randint(1, 4)
        out.append((_TEXT * 2)[pos : pos + n])
        pos = (pos + n) % len(_TEXT)
    return out


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def legacy_body(count: int, tail: list[str] | None = None) -> list[bytes]:
    """A legacy completion body as network reads: one event each (count text events, then the
    `tail` deltas)."""
    reads = [
        _sse({"event": "req", "id": "cr0seg0000000000001", "group_id": "grp1"}),
        _sse({"event": "resp", "id": "cr0rsp0000000000001", "group_id": "grp1"}),
    ]
    deltas = _deltas(count) + (tail or [])
    reads += [_sse({"event": "cmpl", "text": t, "view": "cmpl"}) for t in deltas]
    reads += [_sse({"event": "all_done"})]
    return reads


def connect_body(count: int, tail: list[str] | None = None) -> list[bytes]:
    """A Connect chat body as network reads: one envelope each (count text appends, then the
    `tail` deltas)."""
    block = {"id": "1", "text": {"content": ""}}
    msgs: list[dict[str, Any]] = [
        {"chat": {"id": "d3kimichat0001", "name": "New chat"}},
        {
            "op": "set",
            "mask": "message",
            "message": {"id": "a-1", "role": "assistant", "status": "MESSAGE_STATUS_GENERATING"},
        },
        {"op": "set", "mask": "block.text", "block": block},
    ]
    msgs += [
        {"op": "append", "mask": "block.text.content", "block": {"id": "1", "text": {"content": t}}}
        for t in _deltas(count) + (tail or [])
    ]
    msgs += [
        {
            "op": "set",
            "mask": "message.status",
            "message": {"id": "a-1", "status": "MESSAGE_STATUS_COMPLETED"},
        },
        {"done": {}},
    ]
    return [encode_envelope(m) for m in msgs] + [encode_envelope(b"{}", end_stream=True)]


def _translator(decoder: Any, shaper: AnswerShaper | None = None) -> ResponseTranslator:
    return ResponseTranslator(
        decoder,
        completion_id="cs0bench",
        model="kimi",
        created=1764000000,
        prompt_text="hi",
        shaper=shaper,
    )


def _stream(reads: list[bytes], decoder: Callable[[], Any]) -> int:
    """Translate and encode as the relay does; returns the output bytes."""
    translator = _translator(decoder())
    out = 0
    for data in reads:
        out += len(b"".join(encode_sse(c) for c in translator.feed(data)))
    out += len(b"".join(encode_sse(c) for c in translator.close()) + SSE_DONE)
    return out


def _stream_sse(reads: list[bytes], decoder: Callable[[], Any], tools: bool = False) -> int:
    """The same bytes as `_stream`, through `feed_sse` / `close_sse` (no chunk dicts); with
    `tools`, through the tool-call parser of a plan that declares one tool."""
    translator = _translator(decoder(), AnswerShaper.for_plan(_TOOLS_PLAN) if tools else None)
    out = 0
    for data in reads:
        out += len(translator.feed_sse(data))
    out += len(translator.close_sse() + SSE_DONE)
    return out


def _fold(reads: list[bytes], decoder: Callable[[], Any]) -> int:
    translator = _translator(decoder())
    chunks: list[dict[str, Any]] = []
    for data in reads:
        chunks.extend(translator.feed(data))
    chunks.extend(translator.close())
    return len(json.dumps(fold_completion(chunks, prompt_text="hi"), ensure_ascii=False))


def _sse_only(reads: list[bytes]) -> int:
    decoder = SSEDecoder()
    n = sum(len(decoder.feed(data)) for data in reads)
    return n + len(decoder.close())


def _json_only(payloads: list[bytes]) -> int:
    for payload in payloads:
        json.loads(payload)
    return 0


def _decode_only(reads: list[bytes], decoder: Any) -> int:
    n = sum(len(decoder.feed(data)) for data in reads)
    return n + len(decoder.close())


def _time(fn: Callable[[], int], repeat: int, min_seconds: float) -> tuple[float, int]:
    """Best CPU seconds per call over `repeat` rounds of at least `min_seconds` each."""
    best, out = float("inf"), 0
    for _ in range(repeat):
        calls, start = 0, time.process_time()
        while True:
            out = fn()
            calls += 1
            spent = time.process_time() - start
            if spent >= min_seconds:
                break
        best = min(best, spent / calls)
    return best, out


def run_micro(events: int = 2000, repeat: int = 3, min_seconds: float = 0.3) -> dict[str, Any]:
    legacy = legacy_body(events)
    connect = connect_body(events)
    legacy_tools = legacy_body(events, _CALL_DELTAS)
    connect_tools = connect_body(events, _CALL_DELTAS)
    legacy_payloads = [r[6:-2] for r in legacy]
    connect_payloads = [r[5:] for r in connect]
    legacy_in = sum(map(len, legacy))
    connect_in = sum(map(len, connect))
    work: dict[str, tuple[Callable[[], int], int, int]] = {
        "legacy: json.loads per event (baseline)": (
            lambda: _json_only(legacy_payloads),
            len(legacy),
            legacy_in,
        ),
        "legacy: SSE decoder alone (baseline)": (lambda: _sse_only(legacy), len(legacy), legacy_in),
        "legacy: LegacyDecoder (SSE → events)": (
            lambda: _decode_only(legacy, LegacyDecoder()),
            len(legacy),
            legacy_in,
        ),
        "legacy: stream (translate + encode_sse)": (
            lambda: _stream(legacy, LegacyDecoder),
            len(legacy),
            legacy_in,
        ),
        "legacy: stream (feed_sse)": (
            lambda: _stream_sse(legacy, LegacyDecoder),
            len(legacy),
            legacy_in,
        ),
        "legacy: stream (feed_sse, with tools)": (
            lambda: _stream_sse(legacy_tools, LegacyDecoder, tools=True),
            len(legacy_tools),
            sum(map(len, legacy_tools)),
        ),
        "legacy: non-stream (translate + fold)": (
            lambda: _fold(legacy, LegacyDecoder),
            len(legacy),
            legacy_in,
        ),
        "connect: json.loads per envelope (baseline)": (
            lambda: _json_only(connect_payloads),
            len(connect),
            connect_in,
        ),
        "connect: ConnectDecoder (frames → events)": (
            lambda: _decode_only(connect, ConnectDecoder()),
            len(connect),
            connect_in,
        ),
        "connect: stream (translate + encode_sse)": (
            lambda: _stream(connect, ConnectDecoder),
            len(connect),
            connect_in,
        ),
        "connect: stream (feed_sse)": (
            lambda: _stream_sse(connect, ConnectDecoder),
            len(connect),
            connect_in,
        ),
        "connect: stream (feed_sse, with tools)": (
            lambda: _stream_sse(connect_tools, ConnectDecoder, tools=True),
            len(connect_tools),
            sum(map(len, connect_tools)),
        ),
        "connect: non-stream (translate + fold)": (
            lambda: _fold(connect, ConnectDecoder),
            len(connect),
            connect_in,
        ),
    }
    rows: dict[str, dict[str, Any]] = {}
    for name, (fn, count, size) in work.items():
        seconds, out = _time(fn, repeat, min_seconds)
        rows[name] = {
            "events_per_s": round(count / seconds),
            "input_mb_per_s": round(size / seconds / 1e6, 2),
            "output_mb_per_s": round(out / seconds / 1e6, 2) if "stream (" in name else None,
            "us_per_event": round(seconds / count * 1e6, 3),
        }
    for dialect in ("legacy", "connect"):
        base = next(v for k, v in rows.items() if k.startswith(dialect) and "json.loads" in k)
        for name, row in rows.items():
            if name.startswith(dialect):
                row["cost_vs_json_loads"] = round(row["us_per_event"] / base["us_per_event"], 2)
        plain = rows[f"{dialect}: stream (feed_sse)"]["us_per_event"]
        tools = rows[f"{dialect}: stream (feed_sse, with tools)"]
        tools["tools_vs_plain"] = round(tools["us_per_event"] / plain, 2)
    return {
        "events_per_body": events,
        "python": sys.version.split()[0],
        "legacy_body_bytes": legacy_in,
        "connect_body_bytes": connect_in,
        "results": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['events_per_body']} text events per body, one read per event; "
        f"Python {result['python']}; one core (CPU time).",
        "",
        "| workload | events/s | in MB/s | out MB/s | µs/event | × json.loads |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["results"].items():
        out = row["output_mb_per_s"]
        lines.append(
            f"| {name} | {row['events_per_s']:,} | {row['input_mb_per_s']:.2f} "
            f"| {'–' if out is None else f'{out:.2f}'} | {row['us_per_event']:.2f} "
            f"| {row['cost_vs_json_loads']:.2f} |"
        )
    lines.append("")
    for name, row in result["results"].items():
        if "tools_vs_plain" in row:
            lines.append(f"{name}: {row['tools_vs_plain']:.2f} × the plain feed_sse per event")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument("--events", type=int, default=2000, help="text events per body")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best counts")
    parser.add_argument("--seconds", type=float, default=0.3, help="minimum CPU s per round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    result = run_micro(args.events, args.repeat, args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "micro.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = markdown(result)
    (args.out / "micro.md").write_text(table, encoding="utf-8")
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
