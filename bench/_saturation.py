"""Completions per second at saturation with `kimi-free-api run --workers N`.

The proxy runs as the real command (the supervisor and its N workers, SO_REUSEPORT on one
port) against the fake Kimi, trusting its CA (`--kimi-ca-file`). `concurrency` raw clients, each
with its own account and connection, keep it busy: after one untimed completion per client,
`completions` are timed. Reported: completions/s, TTFT and total time, and the CPU seconds of
all the proxy's processes (read from /proc) per 1,000 completions.
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
from pathlib import Path
from typing import Any

import httpx

from fixtures.fake_kimi import FakeKimi

from ._clients import Sample, raw_once
from ._phases import _drive
from ._stats import summary_ms

__all__ = ["run_saturation"]

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree(root: int) -> list[int]:
    """`root` and its children (the supervisor and its workers)."""
    pids = [root]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                    pids.append(int(entry.name))
    return pids


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / _TICKS


async def run_saturation(
    fake: FakeKimi,
    *,
    workers: int,
    concurrency: int,
    completions: int,
    workdir: Path,
    prompt: str,
    token_prefix: str,
) -> dict[str, Any]:
    port = _free_port()
    log_path = workdir / f"workers-{workers}.log"
    command = [
        sys.executable, "-m", "addon.cli", "run",
        "--host", "127.0.0.1", "--port", str(port),
        "--kimi-base-url", fake.base_url, "--dialect", "legacy",
        "--kimi-ca-file", fake.ca_cert_path or "",
        "--store", str(workdir / f"workers-{workers}.sqlite3"),
        "--confdir", str(workdir / "mitmproxy-conf"),
        "--workers", str(workers),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while log_path.read_text(errors="replace").count("relay ready") < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not start:\n{log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        limits = httpx.Limits(max_connections=concurrency + 8)
        async with httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(120.0), trust_env=False
        ) as http:

            async def one(i: int) -> Sample:
                return await raw_once(http, url, f"{token_prefix}-{i}", prompt)

            await _drive(concurrency, concurrency, one, [])  # warm-up: tokens, spares
            await asyncio.sleep(1.0)
            pids = _tree(proc.pid)
            cpu_before = _cpu_s(pids)
            samples: list[Sample] = []
            start = time.perf_counter()
            await _drive(concurrency, completions, one, samples)
            wall = time.perf_counter() - start
            cpu = _cpu_s(pids) - cpu_before
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            for _ in range(300):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)  # the fake answers the workers' deletions meanwhile
            else:
                for pid in _tree(proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
    good = [s for s in samples if s.ok]
    return {
        "workers": workers,
        "processes": len(pids),
        "concurrency": concurrency,
        "completions": len(samples),
        "ok": len(good),
        "wall_s": round(wall, 3),
        "completions_per_s": round(len(good) / wall, 2) if wall else 0.0,
        "ttft_ms": summary_ms([s.ttft for s in good]),
        "total_ms": summary_ms([s.total for s in good]),
        "proxy_cpu_s_per_1k": round(cpu * 1000 / max(1, len(samples)), 3),
        "exit_status": proc.returncode,
    }
