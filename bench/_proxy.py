"""Start and stop the proxy under test, in this process or in a child process.

`subprocess` (the default of `bench.run`) gives the proxy its own CPU time and RSS; `inprocess`
(the smoke test) shares one event loop with the fake and the clients, so its CPU and RSS figures
are those of the whole benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._probe import RequestLog, snapshot

__all__ = ["ProxyHandle", "start_proxy"]

ROOT = Path(__file__).resolve().parent.parent


class ProxyHandle(Protocol):
    url: str
    separate_process: bool
    #: the event loop the proxy runs on ("uvloop" or "asyncio")
    loop: str

    async def snap(self) -> dict[str, Any]: ...

    async def relay(self) -> tuple[str, dict[str, str]]:
        """The relay's URL and the headers mitmproxy adds (its secret, the client address):
        for the `relay` client, which measures the proxy without the pass through mitmproxy."""
        ...


def relay_of(addon: Any) -> tuple[str, dict[str, str]]:
    from addon.serve._app import RELAY_SECRET_HEADER
    from addon.serve._ratelimit import CLIENT_ADDRESS_HEADER

    host, port = addon.relay_address
    headers = {RELAY_SECRET_HEADER: addon.runtime.secret, CLIENT_ADDRESS_HEADER: "127.0.0.1"}
    return f"http://{host}:{port}", headers


@dataclass
class _InProcess:
    url: str
    log: RequestLog
    addon: Any
    separate_process: bool = False
    loop: str = "in-process"

    async def snap(self) -> dict[str, Any]:
        return snapshot(self.log)

    async def relay(self) -> tuple[str, dict[str, str]]:
        return relay_of(self.addon)


@dataclass
class _Child:
    url: str
    proc: asyncio.subprocess.Process
    separate_process: bool = True
    loop: str = ""

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), 60)
            if not raw:
                raise RuntimeError("the proxy process exited")
            line = raw.decode().strip()
            if line.startswith("BENCH "):
                return line[6:]

    async def snap(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"snap\n")
        await self.proc.stdin.drain()
        result: dict[str, Any] = json.loads(await self._line())
        return result

    async def relay(self) -> tuple[str, dict[str, str]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"relay\n")
        await self.proc.stdin.drain()
        answer = json.loads((await self._line()).removeprefix("RELAY "))
        return answer["url"], answer["headers"]


@contextlib.asynccontextmanager
async def start_proxy(
    *,
    mode: str,
    kimi_base_url: str,
    ca_cert: str | None,
    workdir: Path,
    options: dict[str, Any],
    profile: Path | None = None,
    loop: str = "default",
    tree: Path | None = None,
) -> AsyncIterator[ProxyHandle]:
    """The proxy under test. `tree`: run the proxy of another checkout of this project instead
    (its own `.venv`), e.g. the release a speed target is measured against; its child speaks
    the same stdin/stdout protocol but has no `--loop` (it runs asyncio's loop)."""
    if mode == "inprocess":
        from tests.proxy_harness import running_proxy

        log = RequestLog()
        log.install()
        verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=ca_cert) if ca_cert else True
        )
        try:
            async with running_proxy(
                kimi_base_url,
                workdir,
                verify=verify,  # type: ignore[arg-type]
                lean=True,
                **options,
            ) as p:
                yield _InProcess(url=p.url, log=log, addon=p.addon)
        finally:
            log.remove()
        return
    if mode != "subprocess":
        raise ValueError(f"proxy mode is 'subprocess' or 'inprocess', got {mode!r}")
    root = tree or ROOT
    python = str(tree / ".venv" / "bin" / "python") if tree else sys.executable
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "bench._proxy_child",
        "--kimi-base-url",
        kimi_base_url,
        "--ca",
        ca_cert or "",
        "--dir",
        str(workdir),
        "--options",
        json.dumps(options),
        *(["--profile", str(profile)] if profile else []),
        *([] if tree else ["--loop", loop]),
        cwd=str(root),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    child = _Child(url="", proc=proc)
    try:
        ready = await child._line()
        if ready.startswith("LOOP "):  # a checkout older than the LOOP line has none
            child.loop = ready.removeprefix("LOOP ")
            ready = await child._line()
        else:
            child.loop = "asyncio"
        if tree:
            child.loop += f" ({tree.name})"
        if not ready.startswith("READY "):
            raise RuntimeError(f"unexpected answer from the proxy process: {ready!r}")
        child.url = ready[6:]
        yield child
    finally:
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.write(b"quit\n")
                await proc.stdin.drain()
                proc.stdin.close()
        try:
            # The proxy deletes the conversations it still holds on shutdown (<= 10 s).
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
