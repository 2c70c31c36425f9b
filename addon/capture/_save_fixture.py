"""`kimi-free-api replay --save-fixture FOLDER FILE`: a captured Kimi answer → a golden fixture.

Each Kimi answer stream in FILE (a `--record-upstream` file, a `mitmdump -w` file, HAR) becomes a
scenario folder in the format the golden tests read (fixtures/kimi/README.md,
fixtures/connect/README.md): the raw body (`upstream.sse` or `upstream.bin`), `meta.json` and
`expected.json`. The expectation is a DRAFT — what the translator makes of the body today — and
`meta.json` says so: edit it to what the answer should be (that is the point of a fixture for a
broken chat), then run the golden tests, which pick up every folder.

One answer in FILE → FOLDER; several → FOLDER-1, FOLDER-2, ... An existing folder is never
overwritten.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from fixtures.golden import normalise
from translator._errors import RemoteProtocolError
from translator._upstream import (
    ContentFiltered,
    ConversationStarted,
    Finished,
    MessageId,
    Noise,
    ReasoningDelta,
    SearchResult,
    TextDelta,
    Unknown,
    UpstreamEvent,
    UpstreamFailure,
)
from translator.chat._response import ResponseTranslator
from translator.connect._frames import EnvelopeDecoder
from translator.connect._stream import ConnectDecoder
from translator.legacy._stream import LegacyDecoder

from ._replay import Exchange, ReadFailure, collect

__all__ = ["save_fixtures"]

DRAFT = (
    "DRAFT: expected.json is what the translator made of this body when it was saved; "
    "correct it to what the answer should be, then delete this line"
)
#: the golden Connect tests' translator settings (tests/test_golden_connect.py)
_CONNECT_MODEL = "kimi-k2"


def save_fixtures(paths: Sequence[str], folder: str, *, out: TextIO) -> int:
    """Write a fixture folder per Kimi answer in `paths`; return the exit code (0 written,
    2 nothing to write or an input/folder problem)."""
    exchanges: list[Exchange] = []
    try:
        for path in paths:
            exchanges += [
                ex
                for ex in collect(path)
                if ex.body is not None and ex.status < 400 and not ex.json_body
            ]
    except ReadFailure as exc:
        out.write(f"cannot read {exc}\n")
        return 2
    if not exchanges:
        out.write("no Kimi answer stream with a body found: nothing saved\n")
        return 2
    targets = (
        [Path(folder)]
        if len(exchanges) == 1
        else [Path(f"{folder}-{n}") for n in range(1, len(exchanges) + 1)]
    )
    taken = [t for t in targets if t.exists()]
    if taken:
        out.write(f"{taken[0]} exists: choose another folder (nothing is overwritten)\n")
        return 2
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    for ex, target in zip(exchanges, targets, strict=True):
        assert ex.body is not None
        target.mkdir(parents=True)
        meta: dict[str, Any] = {
            "description": f"Captured: {ex.source}. Say what this exchange shows.",
            "source": f"captured {today} with kimi-free-api replay --save-fixture",
            "expected": DRAFT,
        }
        if ex.dialect == "connect":
            (target / "upstream.bin").write_bytes(ex.body)
            meta["frames"] = _frames(ex.body)
            expected = _connect_expected(ex.body)
        else:
            (target / "upstream.sse").write_bytes(ex.body)
            meta |= {
                "model": "kimi",
                "completion_id": ex.completion_id,
                "created": 0,
                "silent": False,
                "include_usage": False,
                "prompt_text": "",
            }
            expected = _legacy_expected(ex.body, meta)
        for name, doc in (("meta.json", meta), ("expected.json", expected)):
            text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
            (target / name).write_text(text, encoding="utf-8")
        out.write(f"{target}: {ex.dialect} fixture written (check expected.json)\n")
    return 0


def _frames(body: bytes) -> list[Any]:
    """The envelopes as [flags, message] (messages that are not JSON are left out)."""
    frames: list[Any] = []
    try:
        envelopes = EnvelopeDecoder().feed(body)
    except RemoteProtocolError:
        return frames
    for envelope in envelopes:
        try:
            frames.append([envelope.flags, json.loads(envelope.payload)])
        except (ValueError, RecursionError):
            continue
    return frames


def _connect_expected(body: bytes) -> dict[str, Any]:
    """The decoder-level expectation of fixtures/connect (see tests/test_connect_stream.py)."""
    decoder = ConnectDecoder()
    events: list[UpstreamEvent] = []
    failure: dict[str, Any] | None = None
    try:
        events = decoder.feed(body)
        events += decoder.close()
    except RemoteProtocolError as exc:
        failure = _failure(exc)
    out: dict[str, Any] = {
        "text": "",
        "reasoning": "",
        "conversation_id": None,
        "message_ids": [],
        "search_results": [],
        "finished": 0,
        "failure": failure,
        "content_filtered": None,
        "noise": {},
        "unknown": [],
    }
    noise: Counter[str] = Counter()
    for ev in events:
        if isinstance(ev, TextDelta):
            out["text"] += ev.text
        elif isinstance(ev, ReasoningDelta):
            out["reasoning"] += ev.text
        elif isinstance(ev, ConversationStarted):
            out["conversation_id"] = ev.conversation_id
        elif isinstance(ev, MessageId):
            out["message_ids"].append([ev.role, ev.message_id])
        elif isinstance(ev, SearchResult):
            out["search_results"].append(
                {"title": ev.title, "url": ev.url, "site_name": ev.site_name, "snippet": ev.snippet}
            )
        elif isinstance(ev, Finished):
            out["finished"] += 1
        elif isinstance(ev, UpstreamFailure):
            out["failure"] = _failure(ev.error)
        elif isinstance(ev, ContentFiltered):
            out["content_filtered"] = ev.message
        elif isinstance(ev, Noise):
            noise[ev.kind] += 1
        elif isinstance(ev, Unknown):
            out["unknown"].append(ev.kind)
    out["noise"] = dict(noise)
    if out["failure"] is None and out["content_filtered"] is None:
        # the translator's own verdict on a cleanly decoded stream (e.g. no text at all)
        translator = ResponseTranslator(
            ConnectDecoder(), completion_id=None, model=_CONNECT_MODEL, created=0, silent=True
        )
        try:
            translator.feed(body)
            translator.close()
        except RemoteProtocolError as exc:
            out["answer_error"] = _failure(exc)
    return out


def _failure(exc: RemoteProtocolError) -> dict[str, Any]:
    return {
        "status": exc.status,
        "type": exc.type,
        "code": exc.code,
        "message_contains": exc.message[:60],
    }


def _legacy_expected(body: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    """The expectation of fixtures/kimi (see fixtures/golden.py `replay` / `normalise`)."""
    kwargs = {k: meta[k] for k in ("model", "completion_id", "created", "silent")}
    kwargs |= {k: meta[k] for k in ("include_usage", "prompt_text")}
    translator = ResponseTranslator(LegacyDecoder(), **kwargs)
    chunks: list[dict[str, Any]] = []
    error: RemoteProtocolError | None = None
    try:
        chunks += translator.feed(body)
        chunks += translator.close()
    except RemoteProtocolError as exc:
        error = exc
    # The same normal form the golden tests compare (fixtures/golden.py), so a saved fixture
    # passes them by construction.
    expected = normalise(chunks, error)
    expected["event_counts"] = translator.event_counts
    expected["continued_from"] = []
    return expected
