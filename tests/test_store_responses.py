"""The stored Responses API answers (addon/store/_responses.py): a row lives exactly as long as
its Kimi conversation is ours and not yet deleted."""

from __future__ import annotations

from addon.store._store import Store, StoredResponse


def stored(response_id: str, conversation_id: str, account_id: str, *, at: float, parent=None):
    return StoredResponse(
        id=response_id,
        account_id=account_id,
        conversation_id=conversation_id,
        previous_response_id=parent,
        dialect="connect",
        response={"id": response_id, "object": "response", "output": [], "text": "中文"},
        input_items=[{"role": "user", "content": "hi"}],
        created_at=at,
    )


async def test_a_response_lives_with_its_conversation(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    account = await store.account_for_token("refresh-a", now=1.0)
    await store.save_response(stored("resp_1", "conv1", account.id, at=10.0))
    # Not queued for deletion (not ours, or already deleted): not there.
    assert await store.get_response("resp_1") is None
    await store.schedule_deletion(account.id, "conv1", dialect="connect", due_at=100.0)
    got = await store.get_response("resp_1")
    assert got == stored("resp_1", "conv1", account.id, at=10.0)
    assert await store.get_response("resp_unknown") is None
    await store.mark_deleted("conv1")
    assert await store.get_response("resp_1") is None
    await store.close()


async def test_latest_prune_and_delete(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    account = await store.account_for_token("refresh-a", now=1.0)
    await store.schedule_deletion(account.id, "live", dialect=None, due_at=100.0)
    await store.save_response(stored("resp_1", "live", account.id, at=10.0))
    await store.save_response(stored("resp_2", "live", account.id, at=11.0, parent="resp_1"))
    await store.save_response(stored("resp_old", "gone", account.id, at=5.0))
    await store.save_response(stored("resp_young", "gone", account.id, at=50.0))
    assert await store.latest_response_id("live") == "resp_2"
    assert await store.latest_response_id("nothing") is None
    # Only rows older than the cut whose conversation is gone are pruned.
    assert await store.prune_responses(older_than=20.0) == 1
    assert await store.latest_response_id("gone") == "resp_young"
    assert await store.delete_responses("live") == 2
    assert await store.latest_response_id("live") is None
    await store.close()


async def test_rows_go_with_their_account(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    account = await store.account_for_token("refresh-a", now=1.0)
    await store.schedule_deletion(account.id, "c", dialect=None, due_at=100.0)
    await store.save_response(stored("resp_1", "c", account.id, at=10.0))
    await store.delete_account(account.id)
    assert await store.latest_response_id("c") is None
    await store.close()
