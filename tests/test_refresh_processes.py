"""Several real processes on one store file refresh the same accounts: never the same refresh
token twice, never a client 401, never an account declared dead.

Each process is `tests/refresh_worker.py` (an `AccountPool` on the shared store, refreshing
through the real `refresh_grant` against the fake Kimi). The fake rotates on every refresh and
issues access tokens that live three seconds, so the processes first use every account at the
same moment and then keep refreshing them while the others do too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from addon.store._store import Store
from fixtures.fake_kimi import FakeKimi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 10
TOKENS = [f"rt-shared-{n:02d}-5c0f3e9a71" for n in range(10)]


async def run_workers(
    base_url: str,
    store: str,
    processes: int,
    rounds: int,
    tokens: list[str],
    *,
    timeout: float = 60.0,
) -> list[dict]:
    """`processes` copies of tests/refresh_worker.py racing on one store (a SQLite path or a
    postgresql:// URL, already created), each doing `rounds` rounds over `tokens`: their JSON
    reports."""
    start_at = time.time() + 3.0  # after every interpreter has started
    command = [sys.executable, "-m", "tests.refresh_worker", store, base_url]
    command += [f"{start_at:.3f}", str(rounds), *tokens]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(processes)
    ]
    try:
        outputs = [await asyncio.wait_for(p.communicate(), timeout) for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


@pytest.mark.parametrize("processes", [2, 4])
async def test_processes_sharing_a_store_send_each_refresh_token_once(tmp_path, processes):
    store_path = tmp_path / "accounts.sqlite3"
    async with FakeKimi(dialect_routes="both", access_ttl=3.0) as fake:
        for token in TOKENS:
            fake.add_account(token)
        await Store(store_path).close()  # created (and migrated) once, before the race
        results = await run_workers(fake.base_url, str(store_path), processes, ROUNDS, TOKENS)

        refreshes = fake.record.refresh_calls()
        sent = Counter(r.headers["authorization"][7:] for r in refreshes)
        assert sent, "the workers should have refreshed"
        assert max(sent.values()) == 1, "a refresh token was sent to Kimi twice"
        assert set(TOKENS) <= set(sent)  # every account was refreshed from its original token
        assert all(r.status == 200 for r in refreshes)
        # Tokens lived 3 s (2 s before the pool's margin) over more than that: refreshed again.
        assert len(refreshes) > len(TOKENS)
        assert not any(a.dead for a in fake.accounts.values())
    assert sum(r["client_401"] for r in results) == 0
    assert sum(r["auth_failed"] for r in results) == 0
    assert sum(r["calls"] for r in results) == processes * ROUNDS * len(TOKENS)
    store = Store(store_path)
    try:
        views = await store.list_accounts()
        assert len(views) == len(TOKENS)
        assert all(v.health == "ok" for v in views)
    finally:
        await store.close()
