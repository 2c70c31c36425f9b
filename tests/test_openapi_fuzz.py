"""The proxy's own OpenAPI document (`/openapi.json`), and schemathesis against the live proxy.

A real mitmproxy with the addon, in front of the fake Kimi, runs in a thread with its own event
loop (schemathesis calls it synchronously). Every operation of the served document gets a fixed,
derandomized set of generated requests, valid ones (positive) and, for the routes whose input is
a body, invalid ones too (negative). Whatever the input: no 5xx, and every error body is in the
route's error shape (OpenAI's; Anthropic's on the Anthropic routes).

`HYPOTHESIS_PROFILE=deep` generates many more examples (with Hypothesis' database and random
seeds) for hunting; the default run is bounded and the same every time.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings

from addon.serve._openapi import openapi_document
from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
#: examples per operation and mode: the default run stays well under a minute on 2 cores
EXAMPLES = 200 if DEEP else 6
#: routes whose input is a body worth breaking on purpose (negative mode)
NEGATIVE = {"POST /v1/chat/completions", "POST /token/check"}
NEGATIVE_DEEP = NEGATIVE | {"POST /v1/messages", "POST /v1/messages/count_tokens"}
ANTHROPIC = {"POST /v1/messages", "POST /v1/messages/count_tokens"}
AUTH = {"Authorization": "Bearer refresh-schemathesis"}


class LiveProxy:
    """The proxy and the fake Kimi on a loop of their own, in a thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-proxy", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with (
                FakeKimi() as fake,
                running_proxy(fake.base_url, self.tmp_path, kimi_dialect="legacy") as proxy,
            ):
                self.url = proxy.url
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the test thread
            self._failure = exc
            self._ready.set()

    def __enter__(self) -> LiveProxy:
        self._thread.start()
        assert self._ready.wait(60), "the proxy did not start"
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the proxy did not stop"


@pytest.fixture(scope="module")
def live_proxy(tmp_path_factory) -> Iterator[LiveProxy]:
    with LiveProxy(tmp_path_factory.mktemp("openapi-fuzz")) as proxy:
        yield proxy


def test_served_document_is_the_bundled_one_and_covers_every_route(live_proxy):
    served = httpx.get(live_proxy.url + "/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/json")
    document = served.json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1")
    text = json.dumps(document)
    assert '"schemas:' not in text, "every named schema is bundled"
    assert '"#/$defs/' not in text, "every internal reference is rewritten"
    paths = set(document["paths"])
    for route in (
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/token/check",
        "/v1/accounts",
        "/ping",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ):
        assert route in paths, route
    # Every internal reference resolves, and the bundled schemas are valid JSON Schema.
    schemas = document["components"]["schemas"]
    for ref in set(_refs(document)):
        name = ref.removeprefix("#/components/schemas/").split("/")[0]
        assert ref.startswith("#/components/"), ref
        if ref.startswith("#/components/schemas/"):
            assert name in schemas, ref
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _assert_error_shape(label: str, response: Any) -> None:
    body = response.json()
    assert_valid("anthropic.error" if label in ANTHROPIC else "openai.error", body)


def _fuzz(operation: Any, mode: Any, url: str, seen: dict[str, set[int]]) -> None:
    """Run the generated cases of one operation in one mode against the proxy at `url`."""
    label = operation.label
    # Fixed examples by default (derandomized, no example database): a CI run that fails by
    # chance would block everyone; `deep` explores at random instead.
    fixed: dict[str, Any] = {} if DEEP else {"derandomize": True, "database": None}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        **fixed,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=url, headers=AUTH, timeout=60)
        seen.setdefault(label, set()).add(response.status_code)
        assert response.status_code < 500, (label, response.status_code, response.text)
        if response.status_code >= 400:
            _assert_error_shape(label, response)
        elif label == "POST /v1/chat/completions" and "json" in response.headers.get(
            "content-type", ""
        ):
            assert_valid("openai.response", response.json())

    check()


def test_schemathesis_finds_no_5xx_and_only_shaped_errors(live_proxy):
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(openapi_document())
    seen: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    negative = NEGATIVE_DEEP if DEEP else NEGATIVE
    for operation in operations:
        _fuzz(operation, GenerationMode.POSITIVE, live_proxy.url, seen)
        if operation.label in negative:
            _fuzz(operation, GenerationMode.NEGATIVE, live_proxy.url, seen)
    # The run reached every operation, and both answers and refusals happened.
    assert set(seen) == {op.label for op in operations}
    assert 200 in seen["POST /v1/chat/completions"]
    assert any(status >= 400 for status in seen["POST /v1/chat/completions"])
