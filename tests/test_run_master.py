"""`kimi-free-api run` serves with a lean mitmproxy master (addon/process/_master.py): only the
addons its reverse and interception modes use. These tests hold it to both faces as a user
meets them, as a real process: the interception proxy still answers an SDK that keeps
`https://api.openai.com`, still serves mitmproxy's CA at http://mitm.it, and an option of an
addon it does not load stops it at start with a message that names the option."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from addon.process._master import SERVING_ADDONS, proxy_master
from fixtures.fake_kimi import FakeKimi
from tests.service_process import ROOT, command, free_port, running_service
from tests.test_e2e_intercept import ask_through_interception, no_proxy_env  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def test_run_loads_the_serving_addons_and_the_terminal_log_only():
    from mitmproxy.options import Options

    master = proxy_master(Options())
    try:
        names = [type(addon).__name__ for addon in master.addons.chain]
    finally:
        await master.done()  # uninstalls the log handlers it installed
    assert names == ["TermLog", *SERVING_ADDONS]
    # mitmdump's per-flow addons are not there: no request hook of theirs runs per request.
    assert not {"MapRemote", "ModifyHeaders", "StickyCookie", "Save", "AntiCache"} & set(names)


@pytest.mark.usefixtures("no_proxy_env")  # the fixture, imported from test_e2e_intercept
async def test_interception_through_run_answers_the_sdk_and_serves_the_ca(tmp_path):
    intercept = free_port()
    async with FakeKimi() as fake:
        args = ["--kimi-base-url", fake.base_url, "--dialect", "legacy"]
        args += ["--intercept-port", str(intercept)]
        async with running_service(args, tmp_path) as proxy:
            proxy_url = f"http://127.0.0.1:{intercept}"
            ca = tmp_path / "mitmproxy-conf" / "mitmproxy-ca-cert.pem"
            async with httpx.AsyncClient(proxy=proxy_url, trust_env=False, timeout=20) as http:
                onboarding = await http.get("http://mitm.it/cert/pem")
            assert onboarding.status_code == 200
            assert onboarding.content == ca.read_bytes()
            await ask_through_interception(proxy_url, ca, "run intercepts")
        assert proxy.process.returncode == 0, proxy.text()
    completions = [r for r in fake.record.requests if r.path.endswith("/completion/stream")]
    assert len(completions) == 1


def test_an_option_of_an_addon_run_does_not_load_stops_it_with_a_clear_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text('options:\n  map_remote: ["|example.test|127.0.0.1"]\n')
    done = subprocess.run(
        command(["--config", str(config)], tmp_path, free_port()),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{config}: 'Unknown options: map_remote'" in done.stderr.decode()
