"""`kimi-free-api run --workers 2`: two proxy processes on one port, one store.

- Both workers serve the port (the fake sees two session identities: one per process) and the
  account's refresh token, rotated on every refresh and used by both while its 3 s access
  tokens keep running out, is sent to Kimi once each time: no refresh token twice, no 401.
- SIGTERM to the supervisor stops every worker, each deleting the conversations it holds:
  none is left behind on Kimi, and the supervisor exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from fixtures.fake_kimi import FakeKimi
from tests.schema_check import assert_valid
from tests.service_process import ROOT, ServiceProcess, command, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TOKEN = "rt-workers-7d41c9a2e0"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the parent pid is the 2nd field after the command name in parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _start(tmp_path: Path, fake: FakeKimi, *extra: str) -> ServiceProcess:
    port = free_port()
    output = tmp_path / "workers.log"
    args = ["--kimi-base-url", fake.base_url, "--dialect", "legacy", "--workers", "2", *extra]
    with output.open("wb") as out:
        process = subprocess.Popen(
            command(args, tmp_path, port),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return ServiceProcess(process=process, url=f"http://127.0.0.1:{port}", output=output)


async def _ready(service: ServiceProcess) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if service.text().count("relay ready") >= 2:
            return
        assert service.process.poll() is None, service.text()
        await asyncio.sleep(0.1)
    raise AssertionError(f"the workers did not start:\n{service.text()}")


async def _complete(url: str, index: int) -> str:
    # A connection per request: the kernel picks a worker per connection.
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        resp = await http.post(
            url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {TOKEN}"},
            json={"model": "kimi", "messages": [{"role": "user", "content": f"hello {index}"}]},
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert_valid("openai.response", body)
    return str(body["choices"][0]["message"]["content"])


async def _stop(service: ServiceProcess) -> int:
    """SIGTERM to the supervisor; waits without blocking the loop (the fake answers the
    workers' deletions from it). A process still there after 30 s is killed, by its pid."""
    process = service.process
    if process.poll() is None:
        workers = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait(5)
    return process.returncode


async def test_two_workers_share_one_account_and_rotate_its_token_once(tmp_path):
    async with FakeKimi(dialect_routes="legacy", access_ttl=3.0, rtt=0.05) as fake:
        fake.add_account(TOKEN)
        service = _start(tmp_path, fake)
        try:
            await _ready(service)
            # Rounds of concurrent requests over more than two access-token lifetimes: both
            # workers need the account at the same moments, again and again.
            for round_ in range(8):
                answers = await asyncio.gather(
                    *(_complete(service.url, 10 * round_ + i) for i in range(6))
                )
                assert all(answers)
                await asyncio.sleep(0.9)
        finally:
            assert await _stop(service) == 0, service.text()

        # 48 answers; an access token running out mid-round costs a retry after the refresh
        completions = fake.record.calls("completion")
        assert len([r for r in completions if r.status == 200]) >= 48
        # Two processes served: each has its own browser-like session identity.
        assert len({r.headers["x-msh-device-id"] for r in completions}) == 2
        refreshes = fake.record.refresh_calls()
        sent = Counter(r.headers["authorization"][7:] for r in refreshes)
        assert TOKEN in sent
        assert len(refreshes) >= 3  # the 3 s tokens ran out during the test
        assert max(sent.values()) == 1, "a refresh token was sent to Kimi twice"
        assert all(r.status == 200 for r in refreshes)
        assert not any(a.dead for a in fake.accounts.values())


async def test_sigterm_to_the_supervisor_stops_every_worker_and_deletes_their_conversations(
    tmp_path,
):
    async with FakeKimi(dialect_routes="legacy") as fake:
        fake.add_account(TOKEN)
        service = _start(tmp_path, fake, "--conversation-ttl", "600")
        try:
            await _ready(service)
            workers = _children(service.process.pid)
            assert len(workers) == 2
            await asyncio.gather(*(_complete(service.url, i) for i in range(12)))
            completions = fake.record.calls("completion")
            assert len({r.headers["x-msh-device-id"] for r in completions}) == 2
            # Kept for their TTL (600 s), plus the pre-created spares.
            assert len(fake.record.live_conversations()) >= 12
        finally:
            code = await _stop(service)
        assert code == 0, service.text()
        assert fake.record.live_conversations() == []
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists()
        deletes = Counter(r.path for r in fake.record.calls("delete"))
        assert len(deletes) >= 12
        assert max(deletes.values()) == 1  # each deleted once
