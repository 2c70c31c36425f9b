"""Codex CLI end to end: the real `codex exec` → our proxy (reverse mode, `wire_api =
"responses"`) → the fake Kimi playing the model, in a temporary folder holding a file, as
../shared/agent-clients.md shows.

`scripts/dev test` installs `@openai/codex` into `.cache/npm` when CI=true (a failed install fails
CI); elsewhere the test skips when the binary is absent (set KFA_CODEX_BIN to use another one).
The run is bounded (120 s) and killed on timeout.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.proxy_harness import running_proxy
from tests.test_e2e_dialects import TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
CODEX = Path(os.environ.get("KFA_CODEX_BIN") or ROOT / ".cache/npm/node_modules/.bin/codex")
RUN_TIMEOUT = 120.0
SECRET = "The secret word is heron."

#: the model provider pointing Codex at the proxy (README shows the same file)
CONFIG = """\
model = "kimi"
model_provider = "kfa"

[model_providers.kfa]
name = "kimi-free-api"
base_url = "{base_url}/v1"
wire_api = "responses"
env_key = "KFA_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[features]
plugins = false
remote_plugin = false
apps = false
in_app_updates = false

[analytics]
enabled = false
"""


def codex_or_skip() -> Path:
    if CODEX.exists():
        return CODEX
    if os.environ.get("CI") == "true":
        pytest.fail(f"Codex CLI is not installed at {CODEX} (scripts/dev test installs it)")
    pytest.skip(f"Codex CLI is not installed at {CODEX}: run CI=true scripts/dev test once")


async def run_codex(binary: Path, base_url: str, work: Path, home: Path, prompt: str):
    """(exit code, stdout, stderr) of one `codex exec` run, with only the environment it
    needs."""
    (home / "config.toml").write_text(CONFIG.format(base_url=base_url), encoding="utf-8")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "TERM": "dumb",
        "CODEX_HOME": str(home),
        "KFA_API_KEY": TOKEN,
    }
    process = await asyncio.create_subprocess_exec(
        str(binary),
        "exec",
        "--strict-config",
        "--skip-git-repo-check",
        prompt,
        cwd=work,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"codex did not finish within {RUN_TIMEOUT:.0f} s")
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_codex_reads_a_file_through_the_proxy(fake, dialect, tmp_path):
    binary = codex_or_skip()
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "hello.txt").write_text(SECRET + "\n", encoding="utf-8")
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect=dialect) as proxy:
        code, out, err = await run_codex(
            binary, proxy.url, work, home, "read the file hello.txt and tell me what it says"
        )
    assert code == 0, f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    # Codex asked for the file with its own tool (exec_command `cat hello.txt`), ran it, sent the
    # result back, and printed the model's final answer.
    assert f"The file says: {SECRET}" in out, f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert "<tool_call" not in out
    # What the fake saw: the request, then the tool result (Codex's exec output, with the
    # file's content) posted into the same conversation.
    (conversation,) = [c for c in fake.record.conversations.values() if c.messages]
    first, second = (m.text for m in conversation.messages)
    assert "read the file hello.txt" in first
    assert "<tool_result" in second
    assert SECRET in second
    assert "read the file hello.txt" not in second
