from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from addon.accounts._secrets import fingerprint
from addon.store._store import MIGRATIONS, SCHEMA_VERSION, AccountView, Store, StoreError

ROOT = Path(__file__).resolve().parent.parent
T1 = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.original-refresh-token-1"
T2 = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.rotated-refresh-token-2"
ACCESS = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjEwMDB9.access-token-a"


@pytest.fixture
async def store(tmp_path):
    s = Store(tmp_path / "store.db")
    yield s
    await s.close()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_created_with_parent_dirs_private_and_wal(tmp_path):
    path = tmp_path / "a" / "b" / "kimi.db"
    s = Store(path)
    try:
        await s.account_for_token(T1, now=1.0)  # a write, so -wal and -shm exist while open
        assert path.exists()
        assert mode(path) == 0o600
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            assert side.exists()
            assert mode(side) == 0o600
        assert mode(path.parent) == 0o700
        assert (await s.schema_version()) == SCHEMA_VERSION
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM meta WHERE key = 'salt'").fetchone()[0] == 1
        db.close()
    finally:
        await s.close()


async def test_existing_wide_file_is_tightened(tmp_path):
    path = tmp_path / "kimi.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    await Store(path).close()
    assert mode(path) == 0o600


async def test_migrates_from_version_1(tmp_path):
    path = tmp_path / "old.db"
    salt = bytes(range(32))
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0].split(";"):
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('salt', ?)", (salt.hex(),))
    db.execute(
        "INSERT INTO accounts (id, label, source, refresh_token, created_at, updated_at)"
        " VALUES ('acc_000000000001', 'alice', 'config', ?, 1, 1)",
        (T2,),
    )
    db.execute(
        "INSERT INTO token_fingerprints VALUES (?, 'acc_000000000001', 1)", (fingerprint(T1, salt),)
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()

    s = Store(path)
    try:
        assert (await s.schema_version()) == SCHEMA_VERSION == len(MIGRATIONS)
        # the old salt is kept: old fingerprints work
        account = await s.account_for_token(T1, now=5.0)
        assert account.id == "acc_000000000001"
        assert account.refresh_token == T2
        await s.save_exchange(
            "k1",
            account_id=account.id,
            conversation_id="c",
            parent_message_id="m",
            dialect="connect",
            now=5.0,
        )
        assert (await s.find_exchange("k1")).conversation_id == "c"
    finally:
        await s.close()


async def test_migrates_from_version_0_empty_file(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    s = Store(path)
    assert (await s.schema_version()) == SCHEMA_VERSION
    await s.close()


async def test_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "new.db"
    await Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version"):
        Store(path)


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not usable"):
        Store(path)


def test_unopenable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        Store(blocker / "sub" / "kimi.db")


async def test_original_token_maps_to_account_after_rotation(store):
    a = await store.account_for_token(T1, now=1.0)
    assert a.id.startswith("acc_")
    assert len(a.id) == 16
    assert a.refresh_token == T1
    assert a.view.source == "client"
    assert (await store.account_for_token(T1, now=2.0)).id == a.id
    await store.record_rotation(
        a.id, refresh_token=T2, access_token=ACCESS, access_expires_at=99.0, now=3.0
    )
    again = await store.account_for_token(T1, now=4.0)
    assert again.id == a.id
    assert again.refresh_token == T2
    assert again.previous_refresh_token == T1
    assert again.access_token == ACCESS
    assert again.access_expires_at == 99.0
    # the rotated token, if a client ever sends it, is the same account too
    assert (await store.account_for_token(T2, now=5.0)).id == a.id
    assert (await store.account_for_token("other-token", now=6.0)).id != a.id
    # the token itself is never stored as a fingerprint key
    rows = await store._read("SELECT fingerprint FROM token_fingerprints")
    assert all(T1 not in r[0] for r in rows)


async def test_rotation_without_new_refresh_keeps_token(store):
    a = await store.account_for_token(T1, now=1.0)
    b = await store.record_rotation(
        a.id, refresh_token=None, access_token=ACCESS, access_expires_at=5.0, now=2.0
    )
    assert b.refresh_token == T1
    assert b.previous_refresh_token is None
    assert b.access_token == ACCESS


async def test_rotation_persists_across_instances(tmp_path):
    path = tmp_path / "s.db"
    first = Store(path)
    a = await first.account_for_token(T1, now=1.0)
    await first.record_rotation(
        a.id, refresh_token=T2, access_token=ACCESS, access_expires_at=9.0, now=2.0
    )
    # no close(): the rotation is committed when record_rotation returns
    second = Store(path)
    try:
        assert (await second.get_account(a.id)).refresh_token == T2
        assert (await second.account_for_token(T1, now=3.0)).id == a.id
    finally:
        await second.close()
        await first.close()


def _run_child(code: str) -> None:
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, check=True, timeout=60)


async def test_two_processes_share_one_file(tmp_path):
    path = tmp_path / "shared.db"
    mine = Store(path)
    try:
        a = await mine.account_for_token(T1, now=1.0)
        # another process rotates the token and dies without closing (os._exit)
        _run_child(
            f"""
            import asyncio, os
            from addon.store._store import Store
            async def main():
                s = Store({str(path)!r})
                acct = await s.account_for_token({T1!r}, now=2.0)
                assert acct.id == {a.id!r}
                await s.record_rotation(acct.id, refresh_token={T2!r}, access_token="acc-x",
                                        access_expires_at=50.0, now=2.0)
                await s.account_for_token("child-token", now=2.0)
                os._exit(0)
            asyncio.run(main())
            """
        )
        seen = await mine.get_account(a.id)
        assert seen.refresh_token == T2
        assert seen.access_token == "acc-x"
        assert len(await mine.list_accounts()) == 2
        # and this process's writes are visible to a new process
        await mine.set_health(a.id, "dead", now=3.0, error="boom")
        _run_child(
            f"""
            import asyncio
            from addon.store._store import Store
            async def main():
                s = Store({str(path)!r})
                assert (await s.get_account({a.id!r})).health == "dead"
                await s.close()
            asyncio.run(main())
            """
        )
    finally:
        await mine.close()


async def test_config_account_lifecycle(store):
    a = await store.upsert_config_account("alice", T1, dialect="connect", now=1.0)
    assert a.view.source == "config"
    assert a.label == "alice"
    assert a.view.dialect == "connect"
    await store.record_rotation(
        a.id, refresh_token=T2, access_token=ACCESS, access_expires_at=9.0, now=2.0
    )
    # restart with the same configured value: the rotated token stays current
    b = await store.upsert_config_account("alice", T1, dialect=None, now=3.0)
    assert b.id == a.id
    assert b.refresh_token == T2
    assert b.view.dialect is None
    # the account dies; the user logs in again and configures a new value: it replaces and revives
    await store.set_health(a.id, "dead", now=4.0, error="rejected")
    c = await store.upsert_config_account("alice", "fresh-login-token", now=5.0)
    assert c.id == a.id
    assert c.refresh_token == "fresh-login-token"
    assert c.access_token is None
    assert c.health == "ok"
    assert c.view.last_error is None
    assert (await store.account_for_token("fresh-login-token", now=6.0)).id == a.id
    assert (await store.account_for_token(T1, now=6.0)).id == a.id


async def test_config_adopts_an_account_a_client_brought(store):
    client = await store.account_for_token(T1, now=1.0)
    await store.record_rotation(
        client.id, refresh_token=T2, access_token=ACCESS, access_expires_at=9.0, now=2.0
    )
    adopted = await store.upsert_config_account("bob", T1, now=3.0)
    assert adopted.id == client.id
    assert adopted.view.source == "config"
    assert adopted.refresh_token == T2  # the configured value was already rotated away


async def test_views_and_reprs_have_no_tokens(store):
    a = await store.account_for_token(T1, now=1.0)
    await store.record_rotation(
        a.id, refresh_token=T2, access_token=ACCESS, access_expires_at=9.0, now=2.0
    )
    a = await store.get_account(a.id)
    for text in (repr(a), str(a)):
        for secret in (T1, T2, ACCESS):
            assert secret not in text
    views = await store.list_accounts()
    assert [v.id for v in views] == [a.id]
    names = {f.name for f in dataclasses.fields(AccountView)}
    assert not any("token" in n for n in names)
    dumped = repr(views) + repr(views[0].to_json())
    for secret in (T1, T2, ACCESS):
        assert secret not in dumped
    assert views[0].to_json()["id"] == a.id


async def test_health_counters_and_redacted_errors(store):
    a = await store.account_for_token(T1, now=1.0)
    await store.count_request(a.id, now=2.0)
    await store.count_request(a.id, now=2.0)
    await store.set_health(
        a.id, "cooling", now=3.0, cooling_until=63.0, error=f"429 for Bearer {T1}", failure=True
    )
    v = (await store.get_account(a.id)).view
    assert (v.requests, v.failures, v.health, v.cooling_until) == (2, 1, "cooling", 63.0)
    assert T1 not in v.last_error
    assert "429" in v.last_error
    await store.set_health(a.id, "ok", now=4.0)
    v = (await store.get_account(a.id)).view
    assert (v.health, v.cooling_until, v.failures) == ("ok", None, 1)
    assert v.last_error is not None  # kept for the operator
    await store.count_failure(a.id, error="timeout", now=5.0)
    assert (await store.get_account(a.id)).view.failures == 2
    assert (await store.get_account(a.id)).view.last_error == "timeout"


async def test_long_text_window(store):
    a = await store.account_for_token(T1, now=0.0)
    assert await store.count_long_text_round(a.id, now=100.0, window=1000.0) == 1
    assert await store.count_long_text_round(a.id, now=200.0, window=1000.0) == 2
    assert await store.count_long_text_round(a.id, now=1100.0, window=1000.0) == 1  # a new window
    assert (await store.get_account(a.id)).view.window_started_at == 1100.0


async def test_clear_access_only_if(store):
    a = await store.account_for_token(T1, now=1.0)
    await store.record_rotation(
        a.id, refresh_token=None, access_token="new", access_expires_at=9.0, now=2.0
    )
    await store.clear_access(a.id, only_if="old")
    assert (await store.get_account(a.id)).access_token == "new"
    await store.clear_access(a.id, only_if="new")
    assert (await store.get_account(a.id)).access_token is None


async def test_gateway_keys(store):
    assert not await store.has_gateway_keys()
    await store.add_gateway_key("sk-team-0123456789", label="team", account_ids=["acc_1", "acc_2"])
    assert await store.has_gateway_keys()
    grant = await store.verify_gateway_key("sk-team-0123456789")
    assert grant.label == "team"
    assert grant.account_ids == ("acc_1", "acc_2")
    assert await store.verify_gateway_key("sk-team-0123456788") is None
    assert await store.verify_gateway_key("") is None
    # only hashes are stored
    raw = await store._read("SELECT key_hash FROM gateway_keys")
    assert all("sk-team" not in r[0] for r in raw)
    # replacing the set drops keys no longer configured
    await store.replace_gateway_keys([("sk-other-0123456789", "other", ["acc_3"])])
    assert await store.verify_gateway_key("sk-team-0123456789") is None
    assert (await store.verify_gateway_key("sk-other-0123456789")).account_ids == ("acc_3",)


async def test_exchanges(store):
    a = await store.account_for_token(T1, now=1.0)
    assert await store.find_exchange("k") is None
    await store.save_exchange(
        "k",
        account_id=a.id,
        conversation_id="c1",
        parent_message_id="m1",
        dialect="legacy",
        now=10.0,
    )
    await store.save_exchange(
        "k",
        account_id=a.id,
        conversation_id="c1",
        parent_message_id="m2",
        dialect="legacy",
        now=20.0,
    )
    await store.save_exchange(
        "old", account_id=a.id, conversation_id="c0", parent_message_id="m0", dialect=None, now=5.0
    )
    found = await store.find_exchange("k")
    assert (found.account_id, found.conversation_id, found.parent_message_id, found.updated_at) == (
        a.id,
        "c1",
        "m2",
        20.0,
    )
    assert await store.prune_exchanges(older_than=10.0) == 1
    assert await store.find_exchange("old") is None


async def test_pending_deletions(store):
    a = await store.account_for_token(T1, now=1.0)
    await store.schedule_deletion(a.id, "c1", dialect="connect", due_at=10.0)
    await store.schedule_deletion(a.id, "c2", dialect="legacy", due_at=20.0)
    assert await store.due_deletions(5.0) == []
    due = await store.due_deletions(15.0)
    assert [d.conversation_id for d in due] == ["c1"]
    assert due[0].dialect == "connect"
    assert due[0].attempts == 0
    await store.reschedule("c1", now=15.0, backoff=30.0, error=f"HTTP 500 Bearer {T1}")
    assert [d.conversation_id for d in await store.due_deletions(25.0)] == ["c2"]
    later = await store.due_deletions(50.0)
    assert [d.conversation_id for d in later] == ["c2", "c1"]  # c1 now due at 45
    assert later[1].due_at == 45.0
    assert later[1].attempts == 1
    assert T1 not in later[1].last_error
    assert await store.cancel_deletion("c2") is True  # the client continued it
    assert await store.cancel_deletion("c2") is False
    await store.mark_deleted("c1")
    assert await store.due_deletions(1e9) == []


async def test_delete_account_cascades(store):
    a = await store.account_for_token(T1, now=1.0)
    await store.schedule_deletion(a.id, "c1", dialect=None, due_at=1.0)
    assert await store.delete_account(a.id) is True
    assert await store.get_account(a.id) is None
    assert await store.due_deletions(10.0) == []
    assert (await store.account_for_token(T1, now=2.0)).id != a.id  # the fingerprint went too


async def test_memory_store_for_tests():
    s = Store(":memory:")
    a = await s.account_for_token(T1, now=1.0)
    assert await s.get_accounts([a.id, "acc_missing"]) == {a.id: a}
    await s.close()


async def test_refresh_lock_is_exclusive_renewable_and_expires(tmp_path):
    path = tmp_path / "shared.db"
    one, two = Store(path), Store(path)
    try:
        a = await one.account_for_token(T1, now=1.0)
        assert await one.try_refresh_lock(a.id, owner="p1", ttl=30.0, now=100.0) is True
        assert await two.try_refresh_lock(a.id, owner="p2", ttl=30.0, now=110.0) is False
        assert await one.try_refresh_lock(a.id, owner="p1", ttl=30.0, now=120.0) is True  # renewed
        assert await two.try_refresh_lock(a.id, owner="p2", ttl=30.0, now=140.0) is False
        # p1 crashed: its lock ends 30 s after its last renewal
        assert await two.try_refresh_lock(a.id, owner="p2", ttl=30.0, now=150.0) is True
        await one.release_refresh_lock(a.id, owner="p1")  # not p1's any more: nothing happens
        assert await one.try_refresh_lock(a.id, owner="p1", ttl=30.0, now=151.0) is False
        await two.release_refresh_lock(a.id, owner="p2")
        assert await one.try_refresh_lock(a.id, owner="p1", ttl=30.0, now=152.0) is True
    finally:
        await one.close()
        await two.close()


async def test_refresh_lock_waits_for_the_holder(tmp_path):
    path = tmp_path / "shared.db"
    one, two = Store(path), Store(path)
    order: list[str] = []
    try:
        a = await one.account_for_token(T1, now=1.0)

        async def hold(store: Store, owner: str) -> None:
            async with store.refresh_lock(a.id, owner=owner, ttl=30.0, clock=time.time, poll=0.01):
                order.append(f"{owner} in")
                await asyncio.sleep(0.1)
                order.append(f"{owner} out")

        first = asyncio.create_task(hold(one, "p1"))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, hold(two, "p2"))
        assert order == ["p1 in", "p1 out", "p2 in", "p2 out"]
        assert await one.try_refresh_lock(a.id, owner="p3", ttl=30.0, now=time.time()) is True
    finally:
        await one.close()
        await two.close()


async def test_due_deletions_are_claimed_by_one_owner_until_the_claim_runs_out(tmp_path):
    path = tmp_path / "shared.db"
    one, two = Store(path), Store(path)
    try:
        a = await one.account_for_token(T1, now=1.0)
        for n in range(5):
            await one.schedule_deletion(a.id, f"c{n}", dialect="legacy", due_at=10.0 + n)
        first = await one.claim_due_deletions(12.0, owner="p1", claim_ttl=60.0)
        assert [p.conversation_id for p in first] == ["c0", "c1", "c2"]
        second = await two.claim_due_deletions(20.0, owner="p2", claim_ttl=60.0)
        assert [p.conversation_id for p in second] == ["c3", "c4"]  # never p1's rows
        assert await two.claim_due_deletions(21.0, owner="p2", claim_ttl=60.0) == second
        await one.mark_deleted("c0")
        await one.reschedule("c1", now=20.0, backoff=5.0, error="HTTP 500")  # frees the claim
        claimed = await two.claim_due_deletions(25.0, owner="p2", claim_ttl=60.0)
        assert [p.conversation_id for p in claimed] == [
            "c3",
            "c4",
            "c1",
        ]
        # p1 crashed holding c2: its claim ends at 72, then c2 comes back
        assert [
            p.conversation_id
            for p in await two.claim_due_deletions(73.0, owner="p3", claim_ttl=60.0, limit=1)
        ] == ["c2"]
        # shutdown's horizon reaches rows not yet due
        await one.schedule_deletion(a.id, "later", dialect=None, due_at=1e6)
        late = await one.claim_due_deletions(74.0, owner="p1", claim_ttl=60.0, due_by=float("inf"))
        assert [p.conversation_id for p in late] == ["later"]
    finally:
        await one.close()
        await two.close()


async def test_a_deletion_queued_claimed_is_no_other_owners_until_its_claim_runs_out(tmp_path):
    path = tmp_path / "shared.db"
    one, two = Store(path), Store(path)
    try:
        a = await one.account_for_token(T1, now=1.0)
        await one.schedule_deletion(a.id, "c0", dialect="legacy", due_at=50.0)
        # the reply ended at 10 (TTL 0): queued due now, held by p1, in one write
        await one.schedule_claimed_deletion(
            a.id, "c0", dialect="legacy", now=10.0, owner="p1", claim_ttl=60.0
        )
        assert [p.conversation_id for p in await one.due_deletions(10.0)] == ["c0"]
        assert await two.claim_due_deletions(11.0, owner="p2", claim_ttl=60.0) == []
        # p1's own final pass (shutdown) takes it again
        assert [
            p.conversation_id for p in await one.claim_due_deletions(12.0, owner="p1", claim_ttl=1)
        ] == ["c0"]
        # p1 died before its DELETE: the claim ends (at 13 now) and the row comes back
        (back,) = await two.claim_due_deletions(14.0, owner="p2", claim_ttl=60.0)
        assert (back.conversation_id, back.due_at, back.attempts) == ("c0", 10.0, 0)
    finally:
        await one.close()
        await two.close()


async def test_accounts_whose_token_never_worked_expire_and_are_capped(store):
    worked = await store.account_for_token(T1, now=1.0)
    await store.record_rotation(
        worked.id, refresh_token=T2, access_token=ACCESS, access_expires_at=900.0, now=2.0
    )
    config = await store.upsert_config_account("alice", "rt-config-never-used", now=1.0)
    junk = [await store.account_for_token(f"junk-{n}", now=10.0 + n) for n in range(3)]
    # junk-0 is being tried now
    assert await store.try_refresh_lock(junk[0].id, owner="p1", ttl=30.0, now=10.0)
    # junk-1 only
    assert await store.prune_unproven_accounts(now=10.0 + Store.UNPROVEN_TTL + 1.5) == 1
    ids = {v.id for v in await store.list_accounts()}
    assert ids == {worked.id, config.id, junk[0].id, junk[2].id}
    await store.release_refresh_lock(junk[0].id, owner="p1")

    store.MAX_UNPROVEN = 3
    more = [await store.account_for_token(f"more-{n}", now=100.0 + n) for n in range(4)]
    ids = {v.id for v in await store.list_accounts()}
    assert ids == {worked.id, config.id, *(a.id for a in more[1:])}  # the 3 newest unproven
    assert (await store.account_for_token(T1, now=200.0)).id == worked.id  # proven ones stay


class _WalRace:
    """A connection whose first `refusals` switches to WAL fail as SQLite fails them when
    another process switches the same new file at that moment: "database is locked" at once."""

    def __init__(self, connection: sqlite3.Connection, refusals: int) -> None:
        object.__setattr__(self, "_connection", connection)
        object.__setattr__(self, "refusals", refusals)

    def __getattr__(self, name: str) -> object:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._connection, name, value)

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "PRAGMA journal_mode = WAL" and self.refusals:
            object.__setattr__(self, "refusals", self.refusals - 1)
            exc = sqlite3.OperationalError("database is locked")
            exc.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
            raise exc
        return self._connection.execute(sql, *args)  # type: ignore[arg-type]


def _racing_connect(monkeypatch: pytest.MonkeyPatch, refusals: int) -> list[_WalRace]:
    made: list[_WalRace] = []
    connect = sqlite3.connect

    def racing(*args: Any, **kwargs: Any) -> _WalRace:
        made.append(_WalRace(connect(*args, **kwargs), refusals))
        return made[-1]

    monkeypatch.setattr(sqlite3, "connect", racing)
    return made


async def test_a_new_file_two_workers_open_at_once_is_switched_to_wal_by_both(
    tmp_path, monkeypatch
):
    made = _racing_connect(monkeypatch, refusals=3)
    store = Store(tmp_path / "racing.db", busy_timeout=5.0)
    try:
        assert made[0].refusals == 0  # refused three times, then switched
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        account = await store.account_for_token(T1, now=1.0)
        assert (await store.get_account(account.id)) is not None
    finally:
        await store.close()


def test_a_file_locked_past_the_busy_timeout_is_a_clear_store_error(tmp_path, monkeypatch):
    _racing_connect(monkeypatch, refusals=10_000)
    with pytest.raises(StoreError, match="is not usable: database is locked"):
        Store(tmp_path / "locked.db", busy_timeout=0.05)
