"""The admin JSON API and log-in through a real mitmproxy against the fake Kimi (no browser:
tests/test_service_admin_browser.py drives the page itself)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ADMIN_KEY = "sk-admin-7d3f9a1c5e2b8d4f"
TEAM_KEY = "sk-team-2c8e4a6f0b1d3e5a"
ALICE = "rt-admin-alice-4b7e1d9c"
BOB = "rt-admin-bob-8f2a6c3e"


def write_config(tmp_path: Path, *, admin: bool = True) -> str:
    path = tmp_path / "kimi.yaml"
    text = (
        f"accounts:\n  - label: alice\n    refresh_token: {ALICE}\n"
        f"keys:\n  - key: {TEAM_KEY}\n    label: team\n"
    )
    if admin:
        text += f"admin_key: {ADMIN_KEY}\n"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


class Client:
    """httpx with the answers kept, to look for tokens in every one at the end."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.seen: list[str] = []

    async def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        resp = await self.http.request(method, self.url + path, **kwargs)
        self.seen.append(f"{resp.headers}\n{resp.text}")
        return resp

    async def admin(self, method: str, path: str, body=None, key=ADMIN_KEY) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return await self.request(method, "/admin/api" + path, json=body, headers=headers)

    async def chat(self, key: str) -> httpx.Response:
        body = {"model": "kimi", "messages": [{"role": "user", "content": "hello"}]}
        resp = await self.request(
            "POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )
        assert_valid("openai.response" if resp.status_code == 200 else "openai.error", resp.json())
        return resp

    def check_no_secrets(self, *secrets: str) -> None:
        for text in self.seen:
            for secret in secrets:
                assert secret not in text


async def test_log_in_with_the_admin_key_and_a_session_cookie(tmp_path):
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", kimi_config=write_config(tmp_path)
        ) as proxy,
        httpx.AsyncClient(timeout=30, follow_redirects=False) as http,
    ):
        client = Client(http, proxy.url)
        page = await client.request("GET", "/admin")
        assert page.status_code == 200
        assert 'name="key"' in page.text  # the log-in form
        assert (await client.admin("GET", "/overview", key="")).status_code == 401

        wrong = await client.request("POST", "/admin/login", data={"key": "sk-admin-wrong-000000"})
        assert wrong.status_code == 401
        assert "wrong admin key" in wrong.text
        assert "set-cookie" not in wrong.headers

        ok = await client.request("POST", "/admin/login", data={"key": ADMIN_KEY})
        assert ok.status_code == 303
        assert ok.headers["location"] == "/admin"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/admin" in cookie
        session = ok.cookies["kimi_free_api_admin"]
        assert len(session) >= 40

        async def with_cookie(method: str, path: str, value: str = session, **kw):
            # a fresh client per call: no cookie jar, only the cookie given
            async with httpx.AsyncClient(timeout=30, follow_redirects=False) as fresh:
                headers = {"cookie": f"kimi_free_api_admin={value}"}
                resp = await fresh.request(method, proxy.url + path, headers=headers, **kw)
            client.seen.append(f"{resp.headers}\n{resp.text}")
            return resp

        dashboard = await with_cookie("GET", "/admin")
        assert 'id="accounts"' in dashboard.text
        overview = await with_cookie("GET", "/admin/api/overview")
        assert overview.status_code == 200
        assert [a["label"] for a in overview.json()["accounts"]] == ["alice"]
        # a made-up session id is refused
        forged = await with_cookie("GET", "/admin/api/overview", "x" * 43)
        assert forged.status_code == 401
        # state changes with the cookie need a JSON body (a cross-site form cannot send one)
        form_post = await with_cookie("POST", "/admin/api/keys", data={"label": "evil"})
        assert form_post.status_code == 415

        # log-in attempts are limited per client address
        statuses = [
            (await client.request("POST", "/admin/login", data={"key": "sk-admin-guess-00000"}))
            .status_code
            for _ in range(10)
        ]
        assert statuses[-1] == 429, statuses
        assert set(statuses) <= {401, 429}

        out = await with_cookie("POST", "/admin/logout")
        assert out.status_code == 303
        after = await with_cookie("GET", "/admin/api/overview")
        assert after.status_code == 401
        client.check_no_secrets(ADMIN_KEY, ALICE, TEAM_KEY)


async def test_accounts_and_keys_through_the_admin_api(tmp_path):
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", kimi_config=write_config(tmp_path)
        ) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        client = Client(http, proxy.url)
        added = await client.admin("POST", "/accounts", {"label": "bob", "refresh_token": BOB})
        assert added.status_code == 201, added.text
        bob = added.json()["account"]
        assert bob["label"] == "bob"
        assert bob["added_by_admin"] is True
        taken = await client.admin("POST", "/accounts", {"label": "alice", "refresh_token": BOB})
        assert taken.status_code == 409

        too_long = await client.admin("POST", "/keys", {"label": "x" * 4097})
        assert too_long.status_code == 400
        assert "at most 4096 characters" in too_long.json()["error"]["message"]
        created = await client.admin("POST", "/keys", {"label": "laptop"})
        assert created.status_code == 201
        new_key = created.json()["key"]
        key_id = created.json()["id"]
        assert new_key.startswith("sk-")
        assert len(created.json()["accounts"]) == 2  # alice and bob

        # only bob answers while alice is disabled: the new account works
        alice_id = next(
            a["id"] for a in (await client.admin("GET", "/overview")).json()["accounts"]
            if a["label"] == "alice"
        )
        assert (await client.admin("POST", f"/accounts/{alice_id}/disable")).json()["account"][
            "disabled"
        ]
        answered = await client.chat(new_key)
        assert answered.status_code == 200
        bob_fake = fake.account_for(BOB)
        assert bob_fake is not None
        assert any(r.account_id == bob_fake.id for r in fake.record.requests if r.status == 200)
        # the config key's "every account" now includes the admin-added one
        assert (await client.chat(TEAM_KEY)).status_code == 200
        await client.admin("POST", f"/accounts/{alice_id}/enable")

        checked = await client.admin("POST", f"/accounts/{bob['id']}/check")
        assert checked.status_code == 200
        assert checked.json()["live"] is True

        overview = (await client.admin("GET", "/overview")).json()
        keys = {k["label"]: k for k in overview["keys"]}
        assert keys["laptop"]["source"] == "admin"
        assert keys["laptop"]["usage"]["hour"]["requests"] == 1
        assert keys["laptop"]["usage"]["day"]["tokens"] > 0
        assert keys["team"]["source"] == "config"
        accounts = {a["label"]: a for a in overview["accounts"]}
        assert accounts["bob"]["usage"]["day"]["requests"] >= 1
        assert sum(overview["total"]["hourly_requests"]) == overview["total"]["day"]["requests"]

        assert (await client.admin("DELETE", f"/keys/{key_id}")).status_code == 200
        refused = await client.chat(new_key)
        assert refused.status_code == 401
        config_key = keys["team"]["id"]
        assert (await client.admin("DELETE", f"/keys/{config_key}")).status_code == 409

        failures = (await client.admin("GET", "/overview")).json()["failures"]
        assert failures[0]["status"] == 401
        assert failures[0]["error"]["code"] == "invalid_api_key"

        assert (await client.admin("DELETE", f"/accounts/{alice_id}")).status_code == 409
        held = [c.id for c in fake.record.live_conversations(bob_fake.id)]
        assert held, "the TTL keeps bob's answered conversation"
        assert (await client.admin("DELETE", f"/accounts/{bob['id']}")).status_code == 200
        # removing an account deletes the Kimi conversations it still held first
        still = {c.id for c in fake.record.live_conversations(bob_fake.id)}
        assert not (set(held) & still)
        labels = [a["label"] for a in (await client.admin("GET", "/overview")).json()["accounts"]]
        assert labels == ["alice"]
        assert (await client.admin("DELETE", f"/accounts/{bob['id']}")).status_code == 404
        client.check_no_secrets(ADMIN_KEY, ALICE, BOB, TEAM_KEY)
        for account in fake.accounts.values():
            client.check_no_secrets(account.current_refresh_token, *account.access_tokens)
        assert json.dumps(overview).count("sk-") == 0


async def test_every_account_disabled_is_a_clear_503(tmp_path):
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", kimi_config=write_config(tmp_path)
        ) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        client = Client(http, proxy.url)
        alice = (await client.admin("GET", "/overview")).json()["accounts"][0]["id"]
        await client.admin("POST", f"/accounts/{alice}/disable")
        resp = await client.chat(TEAM_KEY)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "accounts_disabled"
        # not ready: the only configured account is off; the gauge says why
        assert (await client.request("GET", "/readyz")).status_code == 503
        metrics = (await client.request("GET", "/metrics")).text
        assert 'kimi_free_api_accounts{health="disabled"} 1.0' in metrics
        await client.admin("POST", f"/accounts/{alice}/enable")
        assert (await client.request("GET", "/readyz")).status_code == 200


async def test_the_admin_page_is_off_without_an_admin_key(tmp_path):
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(
            fake.base_url,
            tmp_path,
            kimi_dialect="legacy",
            kimi_config=write_config(tmp_path, admin=False),
        ) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        assert (await http.get(proxy.url + "/admin")).status_code == 404
        resp = await http.get(
            proxy.url + "/admin/api/overview", headers={"authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert resp.status_code == 404
        assert_valid("openai.error", resp.json())


async def test_a_stream_that_fails_after_its_first_chunk_lists_its_error(tmp_path):
    from fixtures.fake_kimi import Fault, Scenario

    cut = Scenario.of(Fault(kind="cut", match="completion", after_bytes=400))
    async with (
        FakeKimi(dialect_routes="legacy", scenario=cut) as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", kimi_config=write_config(tmp_path)
        ) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        client = Client(http, proxy.url)
        words = " ".join(f"word{i}" for i in range(40))
        body = {"model": "kimi", "stream": True, "messages": [{"role": "user", "content": words}]}
        resp = await client.request(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {TEAM_KEY}"},
        )
        assert resp.status_code == 200  # the stream had started
        assert '"error"' in resp.text
        failures = (await client.admin("GET", "/overview")).json()["failures"]
        assert len(failures) == 1
        assert failures[0]["status"] == 502
        assert failures[0]["key_label"] == "team"
        assert failures[0]["error"]["code"] == "upstream_disconnected"
        assert "broke mid-answer" in failures[0]["error"]["message"]
