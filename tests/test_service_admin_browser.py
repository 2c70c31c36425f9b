"""The admin page in a real browser: Debian's chromium driven by Playwright, against a real
mitmproxy with the addon and the fake Kimi.

Covers: logging in with the admin key, a wrong key refused, adding an account and seeing it
answer a chat through the proxy, revoking a key and seeing it refused. Playwright's own browser
download is never used (`executable_path`); CI installs chromium (scripts/dev). Without it the
test skips, except under CI=true, where a missing browser is a failure.

`KIMI_FREE_API_SCREENSHOT=docs/admin-page.png pytest tests/test_service_admin_browser.py`
also saves the screenshot shown in docs/service.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from fixtures.fake_kimi import FakeKimi
from tests.proxy_harness import running_proxy
from tests.schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ADMIN_KEY = "sk-admin-5e1a9c3d7b2f4e6a"
ALICE = "rt-browser-alice-1c5e9a3d"
BOB = "rt-browser-bob-6d2b8f4a"


def _need_browser() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("CI must have Debian's chromium at /usr/bin/chromium (scripts/dev installs it)")
    pytest.skip("the admin page test needs Debian's chromium at /usr/bin/chromium")


@pytest.fixture
async def browser():
    _need_browser()
    async_api = pytest.importorskip("playwright.async_api")
    async with async_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


def write_config(tmp_path: Path) -> str:
    path = tmp_path / "kimi.yaml"
    path.write_text(
        f"accounts:\n  - label: alice\n    refresh_token: {ALICE}\nadmin_key: {ADMIN_KEY}\n"
    )
    path.chmod(0o600)
    return str(path)


async def chat(url: str, key: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(
            url + "/v1/chat/completions",
            json={"model": "kimi", "messages": [{"role": "user", "content": "hi from the page"}]},
            headers={"authorization": f"Bearer {key}"},
        )
    assert_valid("openai.response" if resp.status_code == 200 else "openai.error", resp.json())
    return resp


async def test_the_admin_page_in_a_browser(tmp_path, browser):
    async with (
        FakeKimi(dialect_routes="legacy") as fake,
        running_proxy(
            fake.base_url, tmp_path, kimi_dialect="legacy", kimi_config=write_config(tmp_path)
        ) as proxy,
    ):
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        page.on("dialog", lambda dialog: dialog.accept())

        # a wrong key is refused, the right one opens the dashboard
        await page.goto(proxy.url + "/admin")
        await page.fill("#key", "sk-admin-not-the-right-one")
        await page.click("#login")
        await page.wait_for_selector("text=wrong admin key")
        assert not await context.cookies()
        await page.fill("#key", ADMIN_KEY)
        await page.click("#login")
        await page.wait_for_selector("#accounts tbody tr[data-label='alice']")
        cookies = await context.cookies()
        assert [c["name"] for c in cookies] == ["kimi_free_api_admin"]
        assert cookies[0]["httpOnly"] is True
        assert cookies[0]["sameSite"] == "Strict"
        assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script sees it

        # add an account by its refresh token; disable alice so only the new one can answer
        await page.fill("#account-label", "bob")
        await page.fill("#account-token", BOB)
        await page.click("#add-account-submit")
        await page.wait_for_selector("#accounts tbody tr[data-label='bob']")
        assert await page.input_value("#account-token") == ""
        await page.click("#accounts tbody tr[data-label='alice'] button.disable")
        await page.wait_for_selector("#accounts tbody tr[data-label='alice'] button.enable")

        # create a key: shown once, on the page
        await page.fill("#key-label", "browser")
        await page.click("#create-key-submit")
        shown = await page.wait_for_selector("#new-key[data-key]")
        key = await shown.get_attribute("data-key")
        assert key is not None
        assert key.startswith("sk-")
        await page.wait_for_selector("#keys tbody tr[data-label='browser']")

        answered = await chat(proxy.url, key)
        assert answered.status_code == 200
        assert "hi from the page" in answered.json()["choices"][0]["message"]["content"]
        bob = fake.account_for(BOB)
        assert bob is not None
        served = [r.account_id for r in fake.record.requests if r.route == "completion"]
        assert served == [bob.id]

        # the chat shows up in the key's and the account's numbers after a refresh
        await page.reload()
        await page.wait_for_selector("#keys tbody tr[data-label='browser'] td.num")
        key_row = await page.inner_text("#keys tbody tr[data-label='browser']")
        assert "\t1\t1\t" in key_row  # requests in the last hour and day

        # revoke it: refused at once
        await page.click("#keys tbody tr[data-label='browser'] button.revoke")
        await page.wait_for_selector("#keys tbody tr[data-label='browser']", state="detached")
        refused = await chat(proxy.url, key)
        assert refused.status_code == 401

        # the refusal is among the recent failures, with its error
        await page.reload()
        await page.wait_for_selector("#failures tbody tr")
        failures = await page.inner_text("#failures tbody")
        assert "invalid_api_key" in failures

        screenshot = os.environ.get("KIMI_FREE_API_SCREENSHOT")
        if screenshot:
            await page.click("#accounts tbody tr[data-label='alice'] button.enable")
            await page.wait_for_selector("#accounts tbody tr[data-label='alice'] button.disable")
            await page.fill("#key-label", "team-laptop")
            await page.click("#create-key-submit")
            await page.wait_for_selector("#keys tbody tr[data-label='team-laptop']")
            await page.evaluate("document.getElementById('new-key').style.display = 'none'")
            await page.screenshot(path=screenshot, full_page=True)

        html = await page.content()
        for secret in (ADMIN_KEY, ALICE, BOB, *bob.access_tokens, bob.current_refresh_token):
            assert secret not in html
        await context.close()
