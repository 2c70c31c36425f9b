"""Claude Code end to end: the real `claude` CLI → our proxy (reverse mode) → the fake Kimi
playing the model, in a temporary folder holding a file, as ../shared/agent-clients.md shows.

`scripts/dev test` installs `@anthropic-ai/claude-code` into `.cache/npm` when CI=true (a failed
install fails CI); elsewhere the test skips when the binary is absent (set KFA_CLAUDE_BIN to use
another one). The run is bounded (120 s) and killed on timeout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.agent_cli import cli_or_skip, run_cli
from tests.proxy_harness import running_proxy
from tests.test_e2e_dialects import TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SECRET = "The secret word is pelican."


def claude_or_skip() -> Path:
    return cli_or_skip("claude", env_var="KFA_CLAUDE_BIN", what="Claude Code")


async def run_claude(binary: Path, base_url: str, work: Path, home: Path, prompt: str):
    """(exit code, stdout, stderr) of one `claude -p` run, with only the environment it needs."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "TERM": "dumb",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": TOKEN,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    return await run_cli(
        [str(binary), "-p", prompt, "--output-format", "json"], cwd=work, env=env
    )


async def test_claude_code_reads_a_file_through_the_proxy(fake, dialect, tmp_path):
    binary = claude_or_skip()
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "hello.txt").write_text(SECRET + "\n", encoding="utf-8")
    async with running_proxy(fake.base_url, tmp_path, kimi_dialect=dialect) as proxy:
        code, out, err = await run_claude(
            binary, proxy.url, work, home, "read the file hello.txt and tell me what it says"
        )
    assert code == 0, f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    result: dict[str, Any] = json.loads(out)
    assert result["type"] == "result"
    assert result["subtype"] == "success", result
    assert result["is_error"] is False
    # Claude Code's requests (system prompt, 24 tools, thinking, output_config, ...) reached
    # Kimi through the Messages face: the fake model asked for `Read`, Claude Code ran it and
    # sent the file back as a tool_result, and the fake's final answer quotes it.
    assert SECRET in result["result"], result["result"]
    assert result["result"].startswith("The file says:")
    calls = fake.record.calls("completion" if dialect == "legacy" else "chat")
    assert len(calls) >= 2  # the turn that asked for the call, the turn with its result
    prompts = [m.text for c in fake.record.conversations.values() for m in c.messages]
    assert any("read the file hello.txt" in p for p in prompts)
    assert any("<tool_result" in p and SECRET in p for p in prompts), prompts
    # Both turns went to ONE Kimi conversation: the resent history (with the call Claude Code
    # echoes back) matched the remembered exchange, so only the tool result was posted.
    used = [c for c in fake.record.conversations.values() if c.messages]
    assert [len(c.messages) for c in used] == [2]
