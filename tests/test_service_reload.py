"""Config errors at start, and reloading the config of a running `python -m addon.cli run`.

Real processes, real signals, real files: SIGHUP reloads keys and accounts without dropping a
stream in flight; a changed file is picked up by polling; a bad new file is refused with all
its problems listed while the old config keeps serving; a bad file at start lists every problem
with its line and exits without a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from addon.process._config import ConfigError, load_config
from fixtures.fake_kimi import FakeKimi
from tests.schema_check import assert_valid
from tests.service_process import ROOT, command, free_port, running_service

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

KEY_OLD = "sk-reload-old-0a1b2c3d4e5f"
KEY_NEW = "sk-reload-new-9f8e7d6c5b4a"
TOKEN = "rt-reload-alice-7e2c9b1d"

BAD = """\
accounts:
  - label: alice
    refresh_token: "a b"
    dialect: grpc
  - refresh_token: tok-123
keys:
  - key: sk-short
    label: team
require_key: maybe
surprise: 1
"""

BAD_PROBLEMS = [
    ("3", "accounts[0].refresh_token", "whitespace or a comma"),
    ("4", "accounts[0].dialect", "must be one of legacy, connect"),
    ("5", "accounts[1].label", "non-empty string"),
    ("7", "keys[0].key", "must start with 'sk-'"),
    ("9", "require_key", "true or false"),
    ("10", "surprise", "unknown key"),
]


def config_text(key: str, *, poll: float) -> str:
    return (
        "accounts:\n"
        "  - label: alice\n"
        f"    refresh_token: {TOKEN}\n"
        "keys:\n"
        f"  - key: {key}\n"
        "    label: team\n"
        "options:\n"
        f"  config_poll_interval: {poll}\n"
    )


def write(path: Path, text: str) -> None:
    # write-then-rename, as editors and config managers do; the inode changes, so does the
    # signature the proxy polls, even within one mtime tick
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


async def chat(http: httpx.AsyncClient, url: str, key: str) -> httpx.Response:
    body = {"model": "kimi", "messages": [{"role": "user", "content": "hi"}]}
    return await http.post(
        url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )


def test_every_problem_is_listed_with_its_line(tmp_path):
    path = tmp_path / "kimi.yaml"
    write(path, BAD)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    errors = info.value.errors
    assert len(errors) == len(BAD_PROBLEMS)
    for error, (line, where, what) in zip(errors, BAD_PROBLEMS, strict=True):
        assert error.startswith(f"{path}:{line}: {where}: "), error
        assert what in error
    message = str(info.value)
    assert message.startswith(f"{path}: 6 errors:\n")
    assert all(e in message for e in errors)


def test_a_bad_config_at_start_lists_every_problem_and_exits_without_a_traceback(tmp_path):
    path = tmp_path / "kimi.yaml"
    write(path, BAD)
    result = subprocess.run(
        [*command(["--config", str(path)], tmp_path, free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    for line, where, what in BAD_PROBLEMS:
        assert f"{path}:{line}: {where}: " in result.stderr
        assert what in result.stderr


async def test_sighup_reloads_keys_without_dropping_an_open_stream(tmp_path):
    path = tmp_path / "kimi.yaml"
    write(path, config_text(KEY_OLD, poll=0))  # polling off: only the signal can reload
    async with (
        FakeKimi(dialect_routes="legacy", token_rate=20) as fake,
        running_service(
            ["--kimi-base-url", fake.base_url, "--dialect", "legacy", "--config", str(path)],
            tmp_path,
        ) as proxy,
        httpx.AsyncClient(timeout=60) as http,
    ):
        assert (await chat(http, proxy.url, KEY_OLD)).status_code == 200
        refused = await chat(http, proxy.url, KEY_NEW)
        assert refused.status_code == 401
        assert_valid("openai.error", refused.json())

        words = " ".join(f"word{i}" for i in range(60))
        body = {"model": "kimi", "stream": True, "messages": [{"role": "user", "content": words}]}
        chunks_after_reload = 0
        text_parts: list[str] = []
        async with http.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEY_OLD}"},
        ) as resp:
            assert resp.status_code == 200
            reloaded = False
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                assert_valid("openai.chunk", chunk)
                for choice in chunk["choices"]:
                    text_parts.append(choice["delta"].get("content") or "")
                if reloaded:
                    chunks_after_reload += 1
                elif text_parts and any(text_parts):
                    write(path, config_text(KEY_NEW, poll=0))
                    proxy.signal(signal.SIGHUP)
                    await proxy.wait_for_output("config reloaded")
                    reloaded = True
        assert reloaded
        assert chunks_after_reload > 0, "the stream should go on after the reload"
        assert "".join(text_parts) == "Echo: " + words[-200:]  # the fake echoes the tail

        assert (await chat(http, proxy.url, KEY_NEW)).status_code == 200
        gone = await chat(http, proxy.url, KEY_OLD)
        assert gone.status_code == 401
        assert_valid("openai.error", gone.json())
    for secret in (KEY_OLD, KEY_NEW, TOKEN):
        assert secret not in proxy.text()


async def test_a_changed_file_is_reloaded_and_a_bad_one_refused(tmp_path):
    path = tmp_path / "kimi.yaml"
    write(path, config_text(KEY_OLD, poll=0.2))
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_service(
            ["--kimi-base-url", fake.base_url, "--dialect", "legacy", "--config", str(path)],
            tmp_path,
        ) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        assert (await chat(http, proxy.url, KEY_OLD)).status_code == 200

        write(path, BAD)
        output = await proxy.wait_for_output("was refused")
        for line, where, what in BAD_PROBLEMS:
            assert f"{path}:{line}: {where}: " in output
            assert what in output
        assert "Traceback" not in output
        # the old config keeps serving
        assert (await chat(http, proxy.url, KEY_OLD)).status_code == 200
        assert proxy.process.poll() is None

        write(path, config_text(KEY_NEW, poll=0.2))
        await proxy.wait_for_output("config reloaded")
        assert (await chat(http, proxy.url, KEY_NEW)).status_code == 200
        assert (await chat(http, proxy.url, KEY_OLD)).status_code == 401


async def test_live_options_apply_others_wait_for_a_restart_and_bad_values_are_refused(
    tmp_path, caplog
):
    from tests.proxy_harness import running_proxy

    caplog.set_level("INFO", logger="kimi_free_api")
    path = tmp_path / "kimi.yaml"
    write(path, config_text(KEY_OLD, poll=0))
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", kimi_config=str(path)
        ) as proxy,
    ):
        reloader = proxy.addon.reloader
        pool = proxy.addon.runtime.pool
        assert reloader is not None
        assert pool.max_concurrency == 5
        write(
            path,
            config_text(KEY_OLD, poll=0)
            + "  max_account_concurrency: 2\n  account_cooldown: 7\n  conversation_ttl: 30\n",
        )
        assert await reloader.reload_now()
        assert pool.max_concurrency == 2
        assert pool.cooldown == 7.0
        assert "take effect after a restart: conversation_ttl" in caplog.text

        write(path, config_text(KEY_OLD, poll=0) + "  max_account_concurrency: 0\n")
        assert not await reloader.reload_now()
        assert "max_account_concurrency: must be a number >= 1" in caplog.text
        assert pool.max_concurrency == 2  # the old config keeps running
        assert reloader.applied == 1
        assert reloader.refused == 1
