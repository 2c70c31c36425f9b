"""The store test suite against PostgreSQL: every test of tests/test_store.py that works on a
`store` runs here on a `postgresql://` store too, plus what only several stores on one server
show (the refresh lock and cleanup claims across connections, the schema version)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from addon.store._pg import PgStore, open_store, safe_url
from addon.store._records import SCHEMA_VERSION
from addon.store._store import StoreError
from tests import test_store as suite


@pytest.fixture
def pg_url(postgres_server):
    return postgres_server.new_database()


@pytest.fixture
async def store(pg_url):
    s = await PgStore.connect(pg_url)
    yield s
    await s.close()


# The shared suite: the same test functions, here with the PostgreSQL `store` above.
for _name, _test in list(vars(suite).items()):
    if _name.startswith("test_") and list(inspect.signature(_test).parameters) == ["store"]:
        globals()[_name] = _test


def test_the_suite_is_shared():
    shared = [n for n in globals() if n.startswith("test_") and getattr(suite, n, None)]
    assert len(shared) >= 10


async def test_schema_version_and_reopen(pg_url):
    first = await PgStore.connect(pg_url)
    account = await first.account_for_token("rt-pg-reopen-1", now=1.0)
    await first.close()
    second = await PgStore.connect(pg_url)
    try:
        assert (await second.schema_version()) == SCHEMA_VERSION
        assert (await second.account_for_token("rt-pg-reopen-1", now=2.0)).id == account.id
    finally:
        await second.close()


async def test_refuses_a_newer_schema(pg_url):
    import psycopg

    await (await PgStore.connect(pg_url)).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE kimi_schema_version SET version = version + 1")
    with pytest.raises(StoreError, match="schema version"):
        await PgStore.connect(pg_url)


async def test_unreachable_server_is_a_store_error_without_the_password():
    url = "postgresql://kimi:s3cret-pass@127.0.0.1:1/none"
    with pytest.raises(StoreError) as info:
        await PgStore.connect(url, connect_timeout=2)
    assert "s3cret-pass" not in str(info.value)
    assert safe_url(url) == "postgresql://kimi:***@127.0.0.1:1/none"


async def test_open_store_picks_the_backend(pg_url, tmp_path):
    pg = await open_store(pg_url)
    lite = await open_store(str(tmp_path / "a.sqlite3"))
    try:
        assert isinstance(pg, PgStore)
        assert not isinstance(lite, PgStore)
    finally:
        await pg.close()
        await lite.close()


async def test_refresh_lock_is_exclusive_across_connections(pg_url):
    one, two = await PgStore.connect(pg_url), await PgStore.connect(pg_url)
    try:
        account = await one.account_for_token("rt-pg-lock-1", now=1.0)
        assert await one.try_refresh_lock(account.id, owner="one", ttl=10, now=100.0)
        assert not await two.try_refresh_lock(account.id, owner="two", ttl=10, now=105.0)
        assert await one.try_refresh_lock(account.id, owner="one", ttl=10, now=105.0)  # renewed
        assert not await two.try_refresh_lock(account.id, owner="two", ttl=10, now=114.0)
        assert await two.try_refresh_lock(account.id, owner="two", ttl=10, now=115.5)  # expired
        await one.release_refresh_lock(account.id, owner="one")  # not its lock any more
        assert not await one.try_refresh_lock(account.id, owner="one", ttl=10, now=116.0)
        await two.release_refresh_lock(account.id, owner="two")
        assert await one.try_refresh_lock(account.id, owner="one", ttl=10, now=116.0)
    finally:
        await one.close()
        await two.close()


async def test_due_deletions_are_claimed_once_across_connections(pg_url):
    one, two = await PgStore.connect(pg_url), await PgStore.connect(pg_url)
    try:
        account = await one.account_for_token("rt-pg-claims-1", now=1.0)
        for n in range(6):
            await one.schedule_deletion(account.id, f"conv-{n}", dialect="legacy", due_at=10.0 + n)
        first = await one.claim_due_deletions(20.0, owner="one", claim_ttl=30, limit=4)
        second = await two.claim_due_deletions(20.0, owner="two", claim_ttl=30)
        assert [p.conversation_id for p in first] == [f"conv-{n}" for n in range(4)]
        assert [p.conversation_id for p in second] == ["conv-4", "conv-5"]
        assert await two.claim_due_deletions(25.0, owner="three", claim_ttl=30) == []
        # crashed holders' claims free themselves
        taken = await two.claim_due_deletions(51.0, owner="three", claim_ttl=30)
        assert [p.conversation_id for p in taken] == [f"conv-{n}" for n in range(6)]
        # re-scheduling (INSERT OR REPLACE) resets the claim, as on SQLite
        await one.schedule_deletion(account.id, "conv-0", dialect="legacy", due_at=60.0)
        again = await one.claim_due_deletions(61.0, owner="one", claim_ttl=30)
        assert [p.conversation_id for p in again] == ["conv-0"]
        assert again[0].attempts == 0
    finally:
        await one.close()
        await two.close()


async def test_a_deletion_queued_claimed_is_taken_by_no_other_connection(pg_url):
    one, two = await PgStore.connect(pg_url), await PgStore.connect(pg_url)
    try:
        account = await one.account_for_token("rt-pg-claims-2", now=1.0)
        await one.schedule_deletion(account.id, "conv-x", dialect="legacy", due_at=90.0)
        await one.schedule_claimed_deletion(
            account.id, "conv-x", dialect="legacy", now=10.0, owner="one", claim_ttl=30
        )
        assert await two.claim_due_deletions(20.0, owner="two", claim_ttl=30) == []
        (back,) = await two.claim_due_deletions(41.0, owner="two", claim_ttl=30)
        assert (back.conversation_id, back.due_at, back.attempts) == ("conv-x", 10.0, 0)
    finally:
        await one.close()
        await two.close()


async def test_timestamps_keep_their_precision(store):
    account = await store.account_for_token("rt-pg-time-1", now=1_795_946_432.125)
    assert (await store.get_account(account.id)).view.created_at == 1_795_946_432.125


async def test_a_failed_write_transaction_leaves_nothing_and_the_store_goes_on(store):
    account = await store.account_for_token("rt-pg-rollback-1", now=1.0)

    async def fail_mid_transaction() -> None:
        async with store._write() as db:
            await db.execute("UPDATE accounts SET requests = 99 WHERE id = ?", (account.id,))
            raise RuntimeError("the caller failed mid-transaction")

    with pytest.raises(RuntimeError):
        await fail_mid_transaction()
    assert (await store.get_account(account.id)).view.requests == 0
    await store.count_request(account.id, now=2.0)
    assert (await store.get_account(account.id)).view.requests == 1


def test_sql_translation():
    from addon.store._pg import _translate

    columns = (("pending_deletions", ("conversation_id", "account_id", "due_at", "claimed_by")),)
    sql = _translate(
        "INSERT OR REPLACE INTO pending_deletions (conversation_id, account_id, due_at)"
        " VALUES (?, ?, ?)",
        columns,
    )
    assert sql == (
        "INSERT INTO pending_deletions (conversation_id, account_id, due_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (conversation_id) DO UPDATE SET account_id = EXCLUDED.account_id,"
        " due_at = EXCLUDED.due_at, claimed_by = DEFAULT"
    )
    assert _translate("INSERT OR IGNORE INTO meta (key, value) VALUES ('salt', ?)", ()) == (
        "INSERT INTO meta (key, value) VALUES ('salt', %s) ON CONFLICT DO NOTHING"
    )
    assert _translate("UPDATE a SET d = ? WHERE id = ? AND d IS NOT ?", ()).endswith(
        "d IS DISTINCT FROM %s"
    )
    assert _translate("SELECT 1 WHERE id IN ()", ()) == "SELECT 1 WHERE id IN (NULL)"


async def hold_write_lock(pg_url):
    import psycopg

    from addon.store._pg import WRITE_LOCK

    holder = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    await holder.execute("BEGIN")
    await holder.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
    return holder


async def test_a_write_cancelled_while_it_waits_for_the_lock_leaves_nothing(store, pg_url):
    account = await store.account_for_token("rt-pg-cancel-1", now=1.0)
    holder = await hold_write_lock(pg_url)
    try:
        write = asyncio.create_task(store.count_request(account.id, now=2.0))
        await asyncio.sleep(0.2)
        assert not write.done()  # waiting for the advisory lock
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
    finally:
        await holder.execute("COMMIT")
        await holder.close()
    assert (await store.get_account(account.id)).view.requests == 0
    await store.count_request(account.id, now=3.0)  # the store goes on
    assert (await store.get_account(account.id)).view.requests == 1


async def test_a_rotation_whose_caller_is_cancelled_is_still_committed(store, pg_url):
    account = await store.account_for_token("rt-pg-cancel-2", now=1.0)
    holder = await hold_write_lock(pg_url)
    try:
        rotation = asyncio.create_task(
            store.record_rotation(
                account.id,
                refresh_token="rt-pg-cancel-2-rotated",
                access_token="access-2",
                access_expires_at=100.0,
                now=2.0,
            )
        )
        await asyncio.sleep(0.2)
        rotation.cancel()
        with pytest.raises(asyncio.CancelledError):
            await rotation
    finally:
        await holder.execute("COMMIT")
        await holder.close()
    for _ in range(200):  # the shielded transaction finishes once the lock is free
        current = await store.get_account(account.id)
        if current.refresh_token == "rt-pg-cancel-2-rotated":
            break
        await asyncio.sleep(0.02)
    assert current.refresh_token == "rt-pg-cancel-2-rotated"
    assert current.access_token == "access-2"
