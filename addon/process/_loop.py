"""The event loop the proxy runs on: uvloop where it is installed, else asyncio's own.

mitmproxy and the relay are asyncio programs; uvloop (libuv, Cython) runs the same programs with
less CPU per socket event, which is most of what a streaming proxy does (docs/benchmarks.md).
`kimi-free-api` passes `loop_factory()` to `asyncio.run`, so mitmproxy's master, its servers and
the relay all run on it. `reuse_port=True` makes every listening socket the loop opens share its
port with the other workers of `--workers N` (SO_REUSEPORT: the kernel spreads connections).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

__all__ = ["LISTEN_BACKLOG", "LOOP_ENV", "loop_factory", "loop_name"]

#: `asyncio` forces asyncio's own loop (uvloop is used when importable otherwise)
LOOP_ENV = "KIMI_FREE_API_LOOP"


def _uvloop_base() -> type[asyncio.AbstractEventLoop] | None:
    if os.environ.get(LOOP_ENV, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


def loop_name() -> str:
    """ "uvloop" or "asyncio": what `loop_factory()` gives in this environment."""
    return "uvloop" if _uvloop_base() is not None else "asyncio"


#: the accept queue of every listening socket the loop opens (the kernel caps it at somaxconn).
#: asyncio's default of 100 overflows when a few hundred clients connect at once: the kernel
#: then drops their handshakes, and some of those connections end in a reset.
LISTEN_BACKLOG = 1024


def loop_factory(*, reuse_port: bool = False) -> Callable[[], asyncio.AbstractEventLoop]:
    """A loop factory for `asyncio.run(..., loop_factory=...)`."""
    base: type[asyncio.AbstractEventLoop] = _uvloop_base() or asyncio.SelectorEventLoop

    class ServerLoop(base):  # type: ignore[valid-type,misc]
        """Every listening socket gets a deep accept queue (`LISTEN_BACKLOG`; mitmproxy opens
        its own with `asyncio.start_server(handler, host, port)`, which has no way to ask for
        one). With `reuse_port`, every TCP socket listening on a fixed port is opened with
        SO_REUSEPORT; port 0 (the relay's ephemeral port) is left alone: with SO_REUSEPORT the
        kernel may hand two processes the same ephemeral port."""

        async def create_server(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("sock") is None:
                kwargs.setdefault("backlog", LISTEN_BACKLOG)
            port = kwargs.get("port", args[2] if len(args) > 2 else None)
            if (
                reuse_port
                and port
                and kwargs.get("sock") is None
                and kwargs.get("reuse_port") is None
            ):
                kwargs["reuse_port"] = True
            return await super().create_server(*args, **kwargs)

    return ServerLoop
