"""The three ways the benchmark asks for one streamed completion, each timed the same way.

- limit: straight to the fake upstream's completion stream, on a conversation that already
  exists (what a perfect proxy could not beat: the one call on the critical path);
- raw: our proxy through a plain async httpx client, reading SSE lines;
- sdk: our proxy through the official openai SDK (AsyncOpenAI, max_retries=0).

Every client parses each event with json.loads, so client-side costs are alike. TTFB is the
first event of any kind, TTFT the first one carrying answer text; chunks counts those.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from translator import ModelFlags
from translator.legacy._calls import completion_call

__all__ = ["Sample", "limit_once", "raw_once", "sdk_once"]


@dataclass(slots=True)
class Sample:
    ok: bool = False
    ttfb: float = 0.0
    ttft: float = 0.0
    total: float = 0.0
    chunks: int = 0
    error: str = ""


def _mark(sample: Sample, start: float, content: bool) -> None:
    now = time.perf_counter() - start
    if not sample.ttfb:
        sample.ttfb = now
    if content:
        if not sample.ttft:
            sample.ttft = now
        sample.chunks += 1


async def limit_once(
    http: httpx.AsyncClient, base_url: str, access_token: str, conversation_id: str, prompt: str
) -> Sample:
    # The same request the proxy sends (translator's completion_call), minus its session headers.
    call = completion_call(conversation_id, prompt=prompt, flags=ModelFlags())
    headers = dict(call.headers) | {"authorization": f"Bearer {access_token}"}
    sample = Sample()
    start = time.perf_counter()
    try:
        async with http.stream(
            call.method, base_url + call.path, json=call.json, headers=headers
        ) as resp:
            if resp.status_code != 200:
                sample.error = f"HTTP {resp.status_code}"
                return sample
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                kind = event.get("event")
                _mark(sample, start, kind == "cmpl" and bool(event.get("text")))
                if kind == "all_done":
                    sample.ok = True
    except httpx.HTTPError as exc:
        sample.error = type(exc).__name__
    sample.total = time.perf_counter() - start
    return sample


def chat_body(prompt: str) -> dict[str, Any]:
    return {"model": "kimi", "stream": True, "messages": [{"role": "user", "content": prompt}]}


async def raw_once(
    http: httpx.AsyncClient,
    url: str,
    token: str,
    prompt: str,
    headers: dict[str, str] | None = None,
) -> Sample:
    sample = Sample()
    start = time.perf_counter()
    try:
        async with http.stream(
            "POST",
            url + "/v1/chat/completions",
            json=chat_body(prompt),
            headers={"authorization": f"Bearer {token}", **(headers or {})},
        ) as resp:
            if resp.status_code != 200:
                sample.error = f"HTTP {resp.status_code}"
                return sample
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    sample.ok = sample.ok or not sample.error
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    sample.error = str(chunk["error"].get("code"))
                    continue
                choices = chunk.get("choices") or ()
                content = bool(choices and (choices[0].get("delta") or {}).get("content"))
                _mark(sample, start, content)
    except httpx.HTTPError as exc:
        sample.error = type(exc).__name__
    sample.ok = sample.ok and not sample.error
    sample.total = time.perf_counter() - start
    return sample


async def sdk_once(sdk: Any, prompt: str) -> Sample:
    import openai

    sample = Sample()
    start = time.perf_counter()
    try:
        stream = await sdk.chat.completions.create(
            model="kimi", stream=True, messages=[{"role": "user", "content": prompt}]
        )
        async for chunk in stream:
            content = bool(chunk.choices and chunk.choices[0].delta.content)
            _mark(sample, start, content)
            if chunk.choices and chunk.choices[0].finish_reason:
                sample.ok = True
    except openai.OpenAIError as exc:
        sample.error = type(exc).__name__
    sample.total = time.perf_counter() - start
    return sample
