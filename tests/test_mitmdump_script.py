"""The addon as users load it into mitmproxy: `mitmdump -s addon/kimi_proxy.py --mode reverse:…`
in a subprocess, with the reverse target as the Kimi base URL."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest

from fixtures.fake_kimi import FakeKimi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = Path(sys.executable).with_name("mitmdump")


async def test_mitmdump_script_reverse_mode(tmp_path):
    async with FakeKimi() as fake:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        proc = await asyncio.create_subprocess_exec(
            str(MITMDUMP),
            "-s",
            str(ROOT / "addon" / "kimi_proxy.py"),
            "--mode",
            f"reverse:{fake.base_url}",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
            "--set",
            f"confdir={tmp_path / 'conf'}",
            "--set",
            f"kimi_store={tmp_path / 'store.sqlite3'}",
            "--set",
            "kimi_dialect=legacy",
            "--set",
            "conversation_ttl=0",
            "--set",
            "precreate_conversations=0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
        try:
            assert proc.stdout is not None
            port = None
            ready = False
            seen: list[str] = []
            async with asyncio.timeout(20):
                while not (port and ready):
                    line = (await proc.stdout.readline()).decode()
                    assert line, "mitmdump exited early:\n" + "".join(seen)
                    seen.append(line)
                    if found := re.search(r"listening at .*:(\d+)", line):
                        port = int(found.group(1))
                    ready = ready or "relay ready" in line
            async with httpx.AsyncClient(timeout=20) as http:
                resp = await http.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "kimi", "messages": [{"role": "user", "content": "via -s"}]},
                    headers={"authorization": "Bearer refresh-script"},
                )
            assert resp.status_code == 200, resp.text
            assert "via -s" in resp.json()["choices"][0]["message"]["content"]
            for _ in range(100):
                if not fake.record.live_conversations():
                    break
                await asyncio.sleep(0.05)
            assert fake.record.live_conversations() == []
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
