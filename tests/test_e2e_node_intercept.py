"""Interception from Node: openai-node (default base URL) → undici ProxyAgent → our regular
proxy → the fake Kimi, trusting mitmproxy's CA through NODE_EXTRA_CA_CERTS, as README says.

Node's built-in fetch ignores HTTPS_PROXY, so the SDK gets a ProxyAgent as its dispatcher
(tests/node/intercept.cjs). `scripts/dev test` installs `openai` and `undici` into .cache/npm
when CI=true (a failed install fails CI); elsewhere the test skips when node or the packages are
absent.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / ".cache/npm/node_modules"
SCRIPT = ROOT / "tests/node/intercept.cjs"


def node_or_skip() -> str:
    node = shutil.which("node")
    missing = [p for p in ("openai", "undici") if not (MODULES / p / "package.json").is_file()]
    if node is not None and not missing:
        return node
    why = "node is not installed" if node is None else f"{', '.join(missing)} not in {MODULES}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (scripts/dev test installs them when CI=true)")
    pytest.skip(f"{why}: run CI=true scripts/dev test once")


async def test_openai_node_through_the_interceptor(tmp_path):
    node = node_or_skip()
    async with (
        FakeKimi() as fake,
        running_proxy(fake.base_url, tmp_path, regular=True, kimi_dialect="legacy") as proxy,
    ):
        assert proxy.regular_url is not None
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "NODE_PATH": str(MODULES),
            "PROXY_URL": proxy.regular_url,
            "OPENAI_API_KEY": "refresh-node",
            "NODE_EXTRA_CA_CERTS": str(proxy.ca_cert),
        }
        process = await asyncio.create_subprocess_exec(
            node,
            str(SCRIPT),
            "hello from node",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), 90)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode == 0, err.decode(errors="replace")
        result = json.loads(out)
        completions = [r for r in fake.record.requests if r.path.endswith("/completion/stream")]
    # The SDK kept OpenAI's URL; the answer came from Kimi (the fake echoes), nothing else.
    assert result["baseURL"] == "https://api.openai.com/v1"
    assert_valid("openai.response", result["completion"])
    assert result["completion"]["model"] == "gpt-4o"
    assert "hello from node" in result["completion"]["choices"][0]["message"]["content"]
    assert "hello from node (streamed)" in result["streamed"]
    assert len(completions) == 2
