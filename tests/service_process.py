"""`python -m addon.cli run ...` as a real subprocess on a free loopback port, for the tests of
what only a whole process shows: log formats, SIGHUP, config files changing under it.

Its output goes to a file (a pipe nobody reads could fill and block the proxy); `lines()` reads
it. `stop()` sends SIGINT and waits; a process that does not stop is killed, by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    url: str
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.text().splitlines()

    async def wait_for_output(self, needle: str, timeout: float = 15.0) -> str:
        """Wait until `needle` shows up in the output; returns the whole output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the output:\n{self.text()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def command(args: Sequence[str], tmp_path: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "addon.cli",
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--confdir",
        str(tmp_path / "mitmproxy-conf"),
        "--store",
        str(tmp_path / "accounts.sqlite3"),
        *args,
    ]


def start(args: Sequence[str], tmp_path: Path, *, env: dict[str, str] | None = None,
          name: str = "proxy") -> ServiceProcess:
    """Start the process (does not wait for it)."""
    port = free_port()
    output = tmp_path / f"{name}.log"
    with output.open("wb") as out:
        process = subprocess.Popen(
            command(args, tmp_path, port),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    return ServiceProcess(process=process, url=f"http://127.0.0.1:{port}", output=output)


async def wait_ready(service: ServiceProcess, timeout: float = 30.0) -> None:
    """Wait until `/healthz` answers (the relay is up behind mitmproxy)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise AssertionError(f"the proxy exited early:\n{service.text()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(service.url + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the proxy did not become ready:\n{service.text()}")


@contextlib.asynccontextmanager
async def running_service(
    args: Sequence[str], tmp_path: Path, *, env: dict[str, str] | None = None,
    name: str = "proxy",
) -> AsyncIterator[ServiceProcess]:
    service = start(args, tmp_path, env=env, name=name)
    try:
        await wait_ready(service)
        yield service
    finally:
        service.stop()
