"""docs/kimi-free-api.service: its ExecStart runs, as written, against the fake Kimi.

The unit's paths are moved into a temp dir and the port to a free one; everything else of the
command line (flags, their order, the log format) is what systemd would run. Then what systemd
does with the unit: probes answer, `ExecReload` (SIGHUP) reloads the config, `KillSignal`
(SIGTERM) stops the process cleanly within `TimeoutStopSec`.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fixtures.fake_kimi import FakeKimi
from tests.service_process import ROOT, ServiceProcess, free_port, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

UNIT = ROOT / "docs" / "kimi-free-api.service"
KEY = "sk-unit-test-3a7c1e9b5d2f"


def read_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_file_is_well_formed():
    unit = read_unit()
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/kimi-free-api/bin/kimi-free-api"
    assert argv[1] == "run"
    # every path it names is one systemd creates or the docs tell you to create
    assert "/etc/kimi-free-api/kimi.yaml" in argv
    assert all(
        not a.startswith("/") or a.startswith(("/etc/kimi-free-api/", "/var/lib/kimi-free-api/"))
        for a in argv[1:]
    )


def test_the_unit_command_line_parses():
    argv = shlex.split(read_unit()["Service"]["ExecStart"])
    result = subprocess.run(
        [sys.executable, "-m", "addon.cli", *argv[1:], "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "--log-format" in result.stdout


def localized(argv: list[str], tmp_path: Path, port: int, kimi: str) -> list[str]:
    """The unit's command with its paths under `tmp_path`, a free port, and the fake Kimi."""
    out = []
    for arg in argv[1:]:
        arg = arg.replace("/etc/kimi-free-api", str(tmp_path / "etc"))
        arg = arg.replace("/var/lib/kimi-free-api", str(tmp_path / "var"))
        out.append(arg)
    out[out.index("--port") + 1] = str(port)
    script = Path(sys.executable).with_name("kimi-free-api")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "addon.cli"]
    return [*head, *out, "--kimi-base-url", kimi, "--dialect", "legacy"]


async def test_the_unit_command_runs_reloads_and_stops(tmp_path):
    unit = read_unit()
    argv = shlex.split(unit["Service"]["ExecStart"])
    (tmp_path / "etc").mkdir()
    (tmp_path / "var").mkdir(mode=0o700)
    config = tmp_path / "etc" / "kimi.yaml"
    config.write_text("options:\n  config_poll_interval: 0\n")
    config.chmod(0o600)
    port = free_port()
    async with FakeKimi(dialect_routes="legacy") as fake:
        output = tmp_path / "unit.log"
        with output.open("wb") as out:
            process = subprocess.Popen(
                localized(argv, tmp_path, port, fake.base_url),
                cwd=tmp_path,  # systemd starts it in /, not in the clone
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        service = ServiceProcess(process=process, url=f"http://127.0.0.1:{port}", output=output)
        try:
            await wait_ready(service)
            async with httpx.AsyncClient(timeout=30) as http:
                assert (await http.get(service.url + "/readyz")).status_code == 200
                body = {"model": "kimi", "messages": [{"role": "user", "content": "hi"}]}
                before = await http.post(
                    service.url + "/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {KEY}"},
                )
                assert before.status_code == 401  # no such key yet

                config.write_text(
                    f"keys:\n  - key: {KEY}\n    label: team\n"
                    "accounts:\n  - label: a\n    refresh_token: rt-unit-a-12345\n"
                    "options:\n  config_poll_interval: 0\n"
                )
                # ExecReload: /bin/kill -HUP $MAINPID
                reload_cmd = unit["Service"]["ExecReload"].replace("$MAINPID", str(process.pid))
                subprocess.run(shlex.split(reload_cmd), check=True, timeout=10)
                await service.wait_for_output("config reloaded")
                after = await http.post(
                    service.url + "/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {KEY}"},
                )
                assert after.status_code == 200, after.text
            # the store lives where the unit says (StateDirectory)
            assert (tmp_path / "var" / "accounts.sqlite3").exists()
            # KillSignal=SIGTERM, TimeoutStopSec
            started = time.monotonic()
            process.send_signal(getattr(signal, unit["Service"]["KillSignal"]))
            assert process.wait(float(unit["Service"]["TimeoutStopSec"])) == 0
            assert time.monotonic() - started < float(unit["Service"]["TimeoutStopSec"])
        finally:
            service.stop()
    lines = [json.loads(line) for line in service.lines() if line.strip()]  # --log-format json
    assert any(line.get("path") == "/v1/chat/completions" for line in lines)
    assert KEY not in service.text()
