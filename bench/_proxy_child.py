"""The proxy in its own process, so its CPU time and memory are measured apart from the fake
upstream and the clients: `python -m bench._proxy_child --kimi-base-url URL --ca PEM --dir DIR`.

Why not `kimi-free-api run`: the CLI has no flag to trust a private CA for Kimi (KimiProxy is
built with verify=True) and the relay's httpx client ignores SSL_CERT_FILE (trust_env=False),
so it cannot talk to the fake's TLS. This runs the same in-process harness the tests use.

Protocol on stdin/stdout, one line each: prints `BENCH READY <url>`; `snap` answers
`BENCH <json>` (see _probe.snapshot); `quit` (or EOF) stops the proxy and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from pathlib import Path

from addon.process._loop import LOOP_ENV, loop_factory, loop_name

from ._probe import RequestLog, snapshot
from ._proxy import relay_of
from ._stats import raise_fd_limit


def _say(line: str) -> None:
    sys.stdout.write("BENCH " + line + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    from tests.proxy_harness import running_proxy

    options = json.loads(args.options)
    log = RequestLog()
    log.install()
    # An SSLContext, not the path: httpx 0.28 deprecates verify=<str>.
    verify = ssl.create_default_context(cafile=args.ca) if args.ca else True
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # lean: the mitmproxy master `kimi-free-api run` serves with (addon/process/_master.py)
    async with running_proxy(
        args.kimi_base_url, Path(args.dir), verify=verify, lean=True, **options
    ) as p:
        _say("READY " + p.url)
        while True:
            line = (await reader.readline()).decode().strip()
            if line == "snap":
                _say(json.dumps(snapshot(log)))
            elif line == "relay":
                # the relay's own secret (a random per-process value, never a Kimi token),
                # for the benchmark's `relay` client on this machine
                url, headers = relay_of(p.addon)
                _say("RELAY " + json.dumps({"url": url, "headers": headers}))
            elif line in ("quit", ""):
                break
    _say("STOPPED")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._proxy_child")
    parser.add_argument("--kimi-base-url", required=True)
    parser.add_argument("--ca", default="")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--options", default="{}", help="mitmproxy options as a JSON object")
    parser.add_argument("--profile", default="", help="write cProfile stats of the run here")
    parser.add_argument(
        "--loop",
        choices=("default", "asyncio", "uvloop"),
        default="default",
        help="the event loop: the proxy's own choice (uvloop when installed), or forced",
    )
    args = parser.parse_args()
    raise_fd_limit()
    if args.loop != "default":
        os.environ[LOOP_ENV] = args.loop
    factory = loop_factory()
    _say("LOOP " + loop_name())
    if not args.profile:
        asyncio.run(serve(args), loop_factory=factory)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(serve(args), loop_factory=factory)
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
