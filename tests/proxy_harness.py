"""A real mitmproxy (in-process) with our addon, on an ephemeral loopback port.

Used by the end-to-end tests and the benchmark. The tests run mitmdump's master (every default
addon, as `mitmdump -s addon/kimi_proxy.py` has); `lean=True` runs the one `kimi-free-api run`
serves with (addon/process/_master.py), which is what the benchmark measures. One Master at a
time: mitmproxy keeps its master in a module global.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import options
from mitmproxy.master import Master
from mitmproxy.tools.dump import DumpMaster

from addon.kimi_proxy import KimiProxy
from addon.process._master import proxy_master


@dataclass
class RunningProxy:
    url: str  # e.g. http://127.0.0.1:PORT (reverse mode) — clients use url + "/v1"
    addon: KimiProxy
    master: Master
    regular_url: str | None = None
    confdir: Path | None = None

    @property
    def ca_cert(self) -> Path:
        assert self.confdir is not None
        return self.confdir / "mitmproxy-ca-cert.pem"


@contextlib.asynccontextmanager
async def running_proxy(
    kimi_base_url: str,
    tmp_path: Path,
    *,
    regular: bool = False,
    verify: bool | str = True,
    store: Path | None = None,
    lean: bool = False,
    **opts: Any,
) -> AsyncIterator[RunningProxy]:
    confdir = tmp_path / "mitmproxy-conf"
    modes = [f"reverse:{kimi_base_url}@0"]
    if regular:
        modes.append("regular@0")
    mitm_options = options.Options(listen_host="127.0.0.1", mode=modes, confdir=str(confdir))
    master: Master
    if lean:
        master = proxy_master(mitm_options, with_termlog=False)
    else:
        master = DumpMaster(mitm_options, with_termlog=False, with_dumper=False)
    addon = KimiProxy(verify=verify)
    master.addons.add(addon)
    settings: dict[str, Any] = {
        "connection_strategy": "lazy",
        "kimi_base_url": kimi_base_url,
        "kimi_store": str(store or tmp_path / "accounts.sqlite3"),
    }
    settings.update(opts)
    master.options.update(**settings)
    task = asyncio.get_running_loop().create_task(master.run())
    try:
        for _ in range(200):
            if addon.runtime is not None and addon.relay_address is not None:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("the proxy did not start")
        addrs = master.addons.get("proxyserver").listen_addrs()
        reverse = f"http://{addrs[0][0]}:{addrs[0][1]}"
        regular_url = f"http://{addrs[1][0]}:{addrs[1][1]}" if regular else None
        yield RunningProxy(
            url=reverse, addon=addon, master=master, regular_url=regular_url, confdir=confdir
        )
    finally:
        # Close mitmproxy's listening sockets first: shutdown alone leaves them to the GC.
        if not task.done():
            await master.addons.get("proxyserver").servers.update([])
        master.shutdown()
        await asyncio.wait_for(task, 15)
