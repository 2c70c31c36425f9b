"""The agent CLIs the end-to-end tests drive (Claude Code, Codex CLI): where they are, and one
bounded run of one of them with only the environment it is given.

`scripts/dev test` installs them into `.cache/npm` when CI=true (a failed install fails CI);
elsewhere a test skips when its CLI is absent.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NPM_BIN = ROOT / ".cache/npm/node_modules/.bin"
#: one agent run's bound; the process is killed when it passes
RUN_TIMEOUT = 120.0


def cli_or_skip(name: str, *, env_var: str, what: str) -> Path:
    """The CLI `name` from `.cache/npm` (or the path in `env_var`): missing on CI fails the test,
    elsewhere it skips it."""
    binary = Path(os.environ.get(env_var) or NPM_BIN / name)
    if binary.exists():
        return binary
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed at {binary} (scripts/dev test installs it)")
    pytest.skip(f"{what} is not installed at {binary}: run CI=true scripts/dev test once")


async def run_cli(argv: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one run, stdin closed, killed after RUN_TIMEOUT."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
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
        pytest.fail(f"{Path(argv[0]).name} did not finish within {RUN_TIMEOUT:.0f} s")
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")
