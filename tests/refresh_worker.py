"""One process of the cross-process refresh test (tests/test_refresh_processes.py).

    python -m tests.refresh_worker STORE KIMI_BASE_URL START_AT ROUNDS TOKEN...

Waits until wall time START_AT (so every process uses the accounts for the first time at
once), then ROUNDS times uses every account concurrently the way a chat does: take an access
token from the pool, make one Kimi call with it, and on a 401 refresh once and retry. Prints
one JSON line: calls made, calls that still ended in 401 (what a client would see), refreshes
refused (an account declared dead).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx

from addon.accounts._pool import Account, AccountPool, AuthFailed, TokenGrant
from addon.accounts._refresh import refresh_grant
from addon.store._pg import open_store
from addon.upstream._kimi import KimiClient
from translator.legacy._calls import user_call


async def main(store_path: str, base_url: str, start_at: float, rounds: int, tokens: list[str]):
    store = await open_store(store_path)  # a SQLite file or a postgresql:// URL
    async with httpx.AsyncClient(timeout=20, trust_env=False) as client:
        kimi = KimiClient(client, base_url)

        async def refresh(token: str) -> TokenGrant:
            return await refresh_grant(kimi, token, path="/api/auth/token/refresh")

        # Short access tokens: a margin below their lifetime, so they are used, then refreshed.
        pool = AccountPool(store, refresh=refresh, clock=time.time, refresh_margin=1.0)
        counts = {"calls": 0, "client_401": 0, "auth_failed": 0}

        async def use(account: Account) -> None:
            try:
                token = await pool.access_token(account)
                response = await kimi.send(user_call(), token=token)
                if response.status_code == 401:
                    await pool.invalidate_access(account, token)
                    token = await pool.access_token(account)
                    response = await kimi.send(user_call(), token=token)
            except AuthFailed:
                counts["auth_failed"] += 1
                counts["client_401"] += 1
                return
            counts["calls"] += 1
            if response.status_code == 401:
                counts["client_401"] += 1
            elif response.status_code == 200:
                await pool.confirm(account)

        await asyncio.sleep(max(0.0, start_at - time.time()))
        accounts = [a for token in tokens for a in await pool.resolve(token)]
        for n in range(rounds):
            await asyncio.gather(*(use(a) for a in accounts))
            await asyncio.sleep(0.25 + 0.05 * (n % 3))
    await store.close()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    store_arg, base_arg, start_arg, rounds_arg, *token_args = sys.argv[1:]
    asyncio.run(main(store_arg, base_arg, float(start_arg), int(rounds_arg), token_args))
