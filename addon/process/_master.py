"""The mitmproxy master that `kimi-free-api run` serves with: mitmproxy's proxy core and the few
addons its two modes (reverse, and interception with `--intercept-port`) use.

mitmdump loads 34 addons, and mitmproxy calls every loaded addon on every event of every flow
(connect, next layer, request headers, request, response headers, response, disconnect, ...),
most of them only to find an option off. That dispatch was about 12 % of the proxy's CPU for a
short answer (docs/benchmarks.md, fifth round). `run` exposes no mitmproxy option of those
addons (its flags are its own), so it loads only what serving needs; `mitmdump -s
addon/kimi_proxy.py` and mitmweb keep every addon and every `--set` option.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mitmproxy.master import Master
    from mitmproxy.options import Options

__all__ = ["SERVING_ADDONS", "proxy_master"]

#: mitmproxy's addons `run` loads, by class name, and why each stays
SERVING_ADDONS = (
    "Core",  # option checks and the core commands
    "Block",  # block_global: the interception proxy refuses clients from public addresses
    "DisableH2C",  # interception: no h2c upgrade mitmproxy could not follow
    "Onboarding",  # interception: http://mitm.it serves mitmproxy's CA to install
    "ProxyAuth",  # `proxyauth` in the config's options still guards the interception proxy
    "Proxyserver",  # the listening servers and their connections
    "NextLayer",  # which protocol layer a connection gets
    "TlsConfig",  # certificates for intercepted TLS, and TLS to upstreams
    "ErrorCheck",  # a server that cannot start (port taken) ends the command with an error
)


def proxy_master(options: Options, *, with_termlog: bool = True) -> Master:
    """A mitmproxy master with `SERVING_ADDONS` (and the terminal log); the caller adds ours."""
    from mitmproxy.addons import (
        block,
        core,
        disable_h2c,
        errorcheck,
        next_layer,
        onboarding,
        proxyauth,
        proxyserver,
        tlsconfig,
    )
    from mitmproxy.master import Master

    master = Master(options, with_termlog=with_termlog)
    # (mitmproxy leaves these constructors and `add` unannotated)
    master.addons.add(  # type: ignore[no-untyped-call]
        core.Core(),
        block.Block(),
        disable_h2c.DisableH2C(),
        onboarding.Onboarding(),  # type: ignore[no-untyped-call]
        proxyauth.ProxyAuth(),
        proxyserver.Proxyserver(),  # type: ignore[no-untyped-call]
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(),
    )
    return master
