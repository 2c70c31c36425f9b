"""`kimi-free-api run --workers N`: N proxy processes serving one port.

The supervisor (the process the user started) starts N copies of the same command with
`--workers 1`, each in its own session, and each opens its listening sockets with SO_REUSEPORT
(`_loop.loop_factory(reuse_port=True)`), so the kernel spreads client connections over them.
They share the store, which is what makes this safe: the refresh lock lets one process at a time
rotate an account's token (the others then use the new one), and cleanup claims hand each due
conversation to one process (docs/architecture.md, "What a store guarantees").

SIGTERM / SIGINT to the supervisor is passed to every worker once; each stops the orderly way
(deletes the conversations it holds) and the supervisor exits when all have, 0 if all did. A
second signal is passed on too: the workers then quit at once, as a single process does. SIGHUP
is passed on as well (each worker reloads its config). A worker
that exits on its own stops the others, and the supervisor exits with that worker's status.
Workers run in their own sessions so that Ctrl-C in a terminal reaches them once, through the
supervisor, and not twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["REUSE_PORT_ENV", "WORKER_ENV", "parse_workers", "run_workers", "tcp_only_reverse"]

#: set in a worker's environment: listen with SO_REUSEPORT
REUSE_PORT_ENV = "KIMI_FREE_API_REUSE_PORT"
#: set in a worker's environment: its index (0 ... N-1), named in its log lines
WORKER_ENV = "KIMI_FREE_API_WORKER"


def parse_workers(text: str) -> int:
    """`auto` (one per core this process may run on) or a whole number >= 1.

    Raises:
        ValueError: anything else.
    """
    text = str(text).strip().lower()
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    count = int(text)
    if count < 1:
        raise ValueError("must be >= 1")
    return count


def tcp_only_reverse() -> None:
    """In workers after the first: `reverse:https://...` listens on TCP only.

    mitmproxy also opens a UDP socket on the port for a reverse proxy to an https target (HTTP/3
    clients); that socket cannot be shared with SO_REUSEPORT (mitmproxy_rs opens it), so the
    first worker keeps it and the others serve TCP, which is what HTTP/1.1 and HTTP/2 clients
    use."""
    from mitmproxy.proxy import mode_specs

    original = mode_specs.ReverseMode.__post_init__

    def post_init(self: mode_specs.ReverseMode) -> None:
        original(self)
        if self.transport_protocol == mode_specs.BOTH:
            object.__setattr__(self, "transport_protocol", mode_specs.TCP)

    mode_specs.ReverseMode.__post_init__ = post_init  # type: ignore[method-assign]


def _prepare_ca(confdir: str) -> None:
    """Create mitmproxy's CA once, before the workers start: N processes creating it at the same
    time would each write their own, and clients would see N different CAs."""
    from mitmproxy import certs

    path = os.path.expanduser(confdir)
    os.makedirs(path, exist_ok=True)
    certs.CertStore.from_store(path, "mitmproxy", 2048)


def run_workers(argv: Sequence[str], count: int, *, confdir: str) -> int:
    """Run `kimi-free-api <argv> --workers 1` `count` times on one port; see the module doc."""
    _prepare_ca(confdir)
    stopping = 0
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:  # SIGHUP: each worker reloads its config
            stopping += 1
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {
        s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    status = 0
    try:
        for index in range(count):
            env = dict(os.environ, **{REUSE_PORT_ENV: "1", WORKER_ENV: str(index)})
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "addon.cli", *argv, "--workers", "1"],
                    env=env,
                    start_new_session=True,
                )
            )
        sys.stderr.write(
            f"kimi-free-api: {count} workers (pids "
            f"{', '.join(str(c.pid) for c in children)}) on one port\n"
        )
        sys.stderr.flush()
        while any(child.poll() is None for child in children):
            for child in children:
                code = child.poll()
                if code is not None and code != 0 and not stopping and status == 0:
                    # A worker failed on its own (a bad option, the port taken...): stop the rest.
                    status = code
                    forward(signal.SIGTERM, None)
            time.sleep(0.05)
        for child in children:
            if child.returncode and status == 0:
                status = child.returncode
        return status
    finally:
        for child in children:
            if child.poll() is None:  # only when the supervisor itself failed
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
