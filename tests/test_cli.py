"""The `kimi-free-api` command as a user runs it: a real subprocess on a free loopback port.

Each test bounds its waits and kills what it started, also when an assertion fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import openai
import pytest

from addon.store._store import Store
from fixtures.fake_kimi import FakeKimi, Fault, Scenario
from tests.proxy_harness import running_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
ORIGINAL = "rt-cli-original-3b9d0f7e21"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def cli(args: Sequence[str], tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen, str]]:
    """Start `python -m addon.cli ARGS --host 127.0.0.1 --port P --confdir ...`, wait until it
    answers /ping, yield (process, base url); kill it on the way out if it still runs."""
    port = free_port()
    log = (tmp_path / "cli.log").open("wb")
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "addon.cli", *args]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--confdir", str(tmp_path / "mitmproxy-conf")]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(300):
                assert proc.poll() is None, (tmp_path / "cli.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url + "/ping")).text == "pong":
                        break
                await asyncio.sleep(0.05)
            else:
                raise TimeoutError("the CLI did not start")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


def tokens_of(fake: FakeKimi) -> set[str]:
    found = set()
    for account in fake.accounts.values():
        found |= {account.initial_refresh_token, account.current_refresh_token}
        found |= set(account.access_tokens)
    for request in fake.record.requests:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            found.add(auth[7:])
    return found


async def test_a_rotated_token_survives_sigkill_before_the_next_request(tmp_path):
    clock = Clock()
    store_path = tmp_path / "accounts.sqlite3"
    config = tmp_path / "kimi.yaml"
    # No spare conversations: the request after the refresh is then a known create call.
    config.write_text("options:\n  precreate_conversations: 0\n")
    body = {"model": "kimi", "messages": [{"role": "user", "content": "rotate me"}]}
    headers = {"authorization": f"Bearer {ORIGINAL}"}
    async with FakeKimi(dialect_routes="legacy", access_ttl=60, clock=clock) as fake:
        args = ["run", "--kimi-base-url", fake.base_url, "--dialect", "legacy"]
        args += ["--store", str(store_path), "--config", str(config), "--log-level", "debug"]
        async with cli(args, tmp_path) as (proc, url), httpx.AsyncClient(timeout=30) as http:
            first = await http.post(url + "/v1/chat/completions", json=body, headers=headers)
            assert first.status_code == 200, first.text
            assert len(fake.record.refresh_calls()) == 1

            # The access token expires; the next request gets a 401 on create, refreshes
            # (rotation 2), and its retried create hangs at Kimi: the proxy dies right there.
            clock.now += 61
            fake.set_scenario(Scenario.of(Fault(kind="delay", match="create", nth=2, seconds=30)))
            fake.record.clear()
            second = asyncio.create_task(
                http.post(url + "/v1/chat/completions", json=body, headers=headers)
            )
            await wait_for(lambda: len(fake.record.calls("create")) == 2)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
            with pytest.raises(httpx.HTTPError):
                await second

        account = fake.account_for(ORIGINAL)
        assert account is not None
        assert account.refresh_count == 2
        assert [c.status for c in fake.record.refresh_calls()] == [200]
        store = Store(store_path)
        try:
            stored = await store.account_for_token(ORIGINAL, now=clock.now)
            assert stored.refresh_token == account.current_refresh_token
            assert stored.refresh_token != ORIGINAL
            assert len(await store.list_accounts()) == 1
        finally:
            await store.close()
        output = (tmp_path / "cli.log").read_text()
        assert "/v1/chat/completions" in output  # the request log lines are there
        for token in tokens_of(fake):
            assert token not in output


async def test_demo_streams_to_curl_style_clients_and_the_sdk_then_exits_on_sigint(tmp_path):
    async with cli(["demo"], tmp_path) as (proc, url):
        body = {"model": "kimi", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
        async with (
            httpx.AsyncClient(timeout=20) as http,
            http.stream(
                "POST",
                url + "/v1/chat/completions",
                json=body,
                headers={"authorization": "Bearer demo-token"},
            ) as resp,
        ):
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert len(lines) > 2

        async with openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="demo-token", max_retries=0
        ) as sdk:
            stream = await sdk.chat.completions.create(
                model="kimi", stream=True, messages=[{"role": "user", "content": "from the SDK"}]
            )
            parts = [
                chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices
            ]
        assert "from the SDK" in "".join(parts)

        proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            pytest.fail("the demo did not stop within 15 s of SIGINT")
        assert code == 0, (tmp_path / "cli.log").read_text()
    output = (tmp_path / "cli.log").read_text()
    assert "kimi-free-api demo" in output
    assert "Traceback" not in output
    # The demo's throwaway store went to TMPDIR, i.e. into this test's directory.
    assert list(tmp_path.glob("kimi-free-api-demo-*/accounts.sqlite3"))


def readme_flags() -> list[str]:
    table = (ROOT / "README.md").read_text()
    return re.findall(r"^\| `(--[a-z-]+)`", table, flags=re.MULTILINE)


@pytest.mark.parametrize("command", [[], ["run"], ["demo"]], ids=["default", "run", "demo"])
def test_help_lists_every_flag_the_readme_names(command):
    flags = readme_flags()
    named = {"--host", "--port", "--kimi-base-url", "--config", "--conversation-ttl"}
    assert named | {"--allow-private-urls", "--log-level"} <= set(flags)
    result = subprocess.run(
        [sys.executable, "-m", "addon.cli", *command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout), flag


async def test_two_processes_share_one_store_without_reusing_a_rotated_token(tmp_path):
    """A CLI process and an in-process proxy on one store file, taking turns across access-token
    lifetimes: each refreshes with the token the other one stored last."""
    clock = Clock()
    store_path = tmp_path / "accounts.sqlite3"
    body = {"model": "kimi", "messages": [{"role": "user", "content": "shared"}]}
    headers = {"authorization": f"Bearer {ORIGINAL}"}
    async with FakeKimi(dialect_routes="legacy", access_ttl=60, clock=clock) as fake:
        args = ["run", "--kimi-base-url", fake.base_url, "--dialect", "legacy"]
        args += ["--store", str(store_path)]
        async with (
            cli(args, tmp_path) as (_, cli_url),
            running_proxy(
                fake.base_url, tmp_path, store=store_path, kimi_dialect="legacy"
            ) as inproc,
            httpx.AsyncClient(timeout=30) as http,
        ):
            for url in (cli_url, inproc.url, cli_url, inproc.url):
                resp = await http.post(url + "/v1/chat/completions", json=body, headers=headers)
                assert resp.status_code == 200, resp.text
                clock.now += 61
        bearers = [c.headers["authorization"][7:] for c in fake.record.refresh_calls()]
        assert len(bearers) == 4
        assert len(set(bearers)) == 4
        assert bearers[0] == ORIGINAL
        assert all(c.status == 200 for c in fake.record.refresh_calls())
        assert len(fake.accounts) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_deletes_held_conversations_then_exits_0_within_the_bound(
    tmp_path, sig
):
    """systemd and container runtimes stop with SIGTERM, a terminal with SIGINT: both delete
    the conversations the process holds (the reply's and the pre-created spare), then exit 0,
    within the 10-second shutdown bound."""
    store_path = tmp_path / "accounts.sqlite3"
    body = {"model": "kimi", "messages": [{"role": "user", "content": "keep me a while"}]}
    async with FakeKimi(dialect_routes="legacy") as fake:
        args = ["run", "--kimi-base-url", fake.base_url, "--dialect", "legacy"]
        args += ["--store", str(store_path), "--conversation-ttl", "600"]
        async with cli(args, tmp_path) as (proc, url), httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(
                url + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {ORIGINAL}"},
            )
            assert resp.status_code == 200, resp.text
            await wait_for(lambda: len(fake.record.calls("create")) == 2)  # + the spare
            await asyncio.sleep(0.2)
            held = fake.record.live_conversations()
            assert len(held) == 2  # kept for the TTL: nothing deleted yet
            started = time.monotonic()
            proc.send_signal(sig)
            try:
                code = await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the proxy did not stop within 15 s of {sig.name}")
            took = time.monotonic() - started
            assert code == 0, (tmp_path / "cli.log").read_text()
            assert took < 10.0
        assert fake.record.live_conversations() == []
        assert {c.id for c in fake.record.deleted_conversations()} >= {c.id for c in held}
        output = (tmp_path / "cli.log").read_text()
        assert "Traceback" not in output
    store = Store(store_path)
    try:
        assert await store.due_deletions(float("inf")) == []
    finally:
        await store.close()
