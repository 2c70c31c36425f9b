"""`stream_flush_ms`: answer events that arrive close together are written together, and what
the client reads is the same answer: the same text, role and finish reason, in fewer chunks
(deltas that reach the translator in one piece merge into one chunk, docs/translator.md), and
the first write is never held.

Kimi (the fake) streams about 80 events, one every 5 ms. With a 150 ms interval the proxy may
write at most once per interval after its first write, so the client sees a handful of network
reads instead of one per event; with 0 every event is written at once. The assertions are on
counts and content, with wide margins, so a loaded machine cannot make them flake: a late
proxy can only merge more, never write more often.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.test_e2e_dialects import (
    TOKEN,
    data_payloads,
    delta_text,
    finish_reasons,
    user,
    valid_chunks,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

QUESTION = "x" * 194  # the fake echoes "Echo: " + this, in 1..4-character events: ~80 events


async def read_stream(url: str) -> tuple[list[bytes], list[float], float]:
    """The body's network reads, when each arrived, and when the request was sent."""
    body = {"model": "kimi", "stream": True, "messages": [user(QUESTION)]}
    reads: list[bytes] = []
    arrivals: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:
        sent = time.monotonic()
        async with http.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {TOKEN}"},
        ) as resp:
            assert resp.status_code == 200
            async for piece in resp.aiter_raw():
                reads.append(piece)
                arrivals.append(time.monotonic())
    return reads, arrivals, sent


def chunks_of_part(read: bytes) -> list[dict[str, Any]]:
    """The chunks of one network read (whole events: the proxy writes whole events)."""
    lines = read.decode().split("\n")
    return [json.loads(p) for p in data_payloads(lines) if p != "[DONE]"]


def chunks_of(reads: list[bytes]) -> list[dict[str, Any]]:
    lines = b"".join(reads).decode().split("\n")
    return valid_chunks(data_payloads(lines))


def shape(chunks: list[dict[str, Any]]) -> tuple[Any, ...]:
    """What a client acts on besides the text (ids and timestamps differ between requests)."""
    roles = [c["choices"][0]["delta"].get("role") for c in chunks if c.get("choices")]
    return (
        [r for r in roles if r],
        finish_reasons(chunks),
        {c["model"] for c in chunks},
        {c["object"] for c in chunks},
    )


async def answer(flush_ms: int, tmp_path) -> tuple[list[bytes], list[float], float]:
    async with FakeKimi(token_rate=200.0, chunk_size=(4096, 4096)) as fake, running_proxy(
        fake.base_url,
        tmp_path / f"flush{flush_ms}",
        kimi_dialect="legacy",
        precreate_conversations=0,
        stream_flush_ms=flush_ms,
    ) as proxy:
        return await read_stream(proxy.url)


async def test_close_events_are_written_together_and_nothing_else_changes(tmp_path):
    each_reads, _, _ = await answer(0, tmp_path)
    held_reads, arrivals, sent = await answer(150, tmp_path)

    each, held = chunks_of(each_reads), chunks_of(held_reads)
    assert len(each) > 60  # the premise: many small events
    # the same answer: text, role, finish reason, model; in fewer chunks
    assert delta_text(held) == delta_text(each) == "Echo: " + QUESTION
    assert shape(held) == shape(each)
    assert finish_reasons(held) == ["stop"]
    assert len(held) < len(each) // 3

    # The stream took >= 400 ms at 5 ms per event: one write per 150 ms after the first, the
    # headers and the end make a handful; each event on its own would be ~80.
    assert len(held_reads) <= 12, len(held_reads)
    stream_time = arrivals[-1] - sent
    assert stream_time >= 0.35

    # The first content went out at once: it came in a read with few events, not the
    # first 150 ms of them (~30), and the later reads carry the rest.
    first = next(i for i, r in enumerate(held_reads) if b'"content"' in r)
    first_text = delta_text(chunks_of_part(held_reads[first]))
    assert 0 < len(first_text) < len(delta_text(held)) // 2, first_text


async def test_a_negative_interval_is_refused(tmp_path):
    async with FakeKimi() as fake:
        with pytest.raises(Exception, match="stream_flush_ms must be >= 0"):
            async with running_proxy(
                fake.base_url, tmp_path, kimi_dialect="legacy", stream_flush_ms=-1
            ):
                pass
