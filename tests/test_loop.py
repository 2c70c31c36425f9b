"""The proxy's event loop (addon/process/_loop.py): deep accept queues, SO_REUSEPORT for
`--workers`.

Why the accept queue matters: with asyncio's default of 100, a burst of a few hundred clients
(bench.run at c=500) overflowed the proxy's queue; the kernel dropped handshakes and some
connections ended in a reset, seen by the client as a ReadError before any byte.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from addon.process._loop import LISTEN_BACKLOG, loop_factory


def create_server_kwargs(*, reuse_port: bool, **call: Any) -> dict[str, Any]:
    """The keyword arguments the loop's create_server hands to its base class."""
    loop = loop_factory(reuse_port=reuse_port)()
    seen: dict[str, Any] = {}

    async def base_create_server(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)

    base = type(loop).__mro__[1]
    original = base.create_server
    base.create_server = base_create_server
    try:
        loop.run_until_complete(loop.create_server(asyncio.Protocol, **call))
    finally:
        base.create_server = original
        loop.close()
    return seen


@pytest.mark.parametrize("reuse_port", [False, True])
def test_every_listening_socket_gets_a_deep_accept_queue(reuse_port):
    kwargs = create_server_kwargs(reuse_port=reuse_port, host="127.0.0.1", port=0)
    assert kwargs["backlog"] == LISTEN_BACKLOG >= 1000
    # an explicit value is kept
    kwargs = create_server_kwargs(reuse_port=reuse_port, host="127.0.0.1", port=0, backlog=7)
    assert kwargs["backlog"] == 7


def test_reuse_port_only_for_fixed_ports_when_asked():
    assert create_server_kwargs(reuse_port=True, host="127.0.0.1", port=8000)["reuse_port"]
    assert "reuse_port" not in create_server_kwargs(reuse_port=True, host="127.0.0.1", port=0)
    assert "reuse_port" not in create_server_kwargs(reuse_port=False, host="127.0.0.1", port=80)
