"""Codex CLI end to end: the real `codex exec` → our proxy (reverse mode, `wire_api =
"responses"`) → the fake Kimi playing the model, in a temporary folder holding a file, as
../shared/agent-clients.md shows.

`scripts/dev test` installs `@openai/codex` into `.cache/npm` when CI=true (a failed install fails
CI); elsewhere the test skips when the binary is absent (set KFA_CODEX_BIN to use another one).
The run is bounded (120 s) and killed on timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent_cli import cli_or_skip, run_cli
from tests.proxy_harness import running_proxy
from tests.test_e2e_dialects import TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

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
    return cli_or_skip("codex", env_var="KFA_CODEX_BIN", what="Codex CLI")


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
    return await run_cli(
        [str(binary), "exec", "--strict-config", "--skip-git-repo-check", prompt],
        cwd=work,
        env=env,
    )


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
