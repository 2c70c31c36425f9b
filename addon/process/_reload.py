"""Reloading the config file while the proxy runs: on SIGHUP, and when the file changes.

The file is polled (its mtime, size and inode, every `interval` seconds) rather than watched
with inotify: polling works the same on every platform and for files replaced by editors,
`mv`, or a Kubernetes ConfigMap's symlink swap. A new file is read and checked in full before
anything changes: a bad one is refused with every problem listed, and the running config stays.
What a reload can change is applied by `apply` (the runtime: accounts, keys, `require_key`,
`admin_key` and the options that can change live); requests in flight keep the account they
hold, so open streams go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from ._config import Config, ConfigError, load_config

__all__ = ["ConfigReloader"]

log = logging.getLogger("kimi_free_api")

Signature = tuple[int, int, int] | None


def _signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigReloader:
    """Calls `apply(config)` with each good new version of the file at `path`."""

    def __init__(
        self, path: str, apply: Callable[[Config], Awaitable[None]], *, interval: float = 2.0
    ) -> None:
        self.path = path
        self.apply = apply
        self.interval = interval
        self._seen = _signature(path)
        self._task: asyncio.Task[None] | None = None
        #: reloads asked for by SIGHUP (a signal handler cannot await)
        self._signalled: set[asyncio.Task[bool]] = set()
        #: one reload at a time (SIGHUP and the poll may ask at once)
        self._reloading = asyncio.Lock()
        self._signal = False
        #: reloads applied / refused (for tests and the log)
        self.applied = 0
        self.refused = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._signal = True
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            # not the main thread, or no SIGHUP on this platform: the file is still polled
            log.debug("config reload: SIGHUP is not available here")
        if self.interval > 0:
            self._task = loop.create_task(self._poll())

    async def stop(self) -> None:
        if self._signal:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload_now())
        self._signalled.add(task)
        task.add_done_callback(self._signalled.discard)

    async def reload_now(self) -> bool:
        """Read, check and apply the file now; True when it was applied."""
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> bool:
        self._seen = _signature(self.path)
        try:
            config = load_config(self.path)
            await self.apply(config)
        except ConfigError as exc:
            self.refused += 1
            log.error("config: %s was refused; the running config stays.\n%s", self.path, exc)
            return False
        except Exception:
            self.refused += 1
            log.exception("config: applying %s failed; the running config stays", self.path)
            return False
        self.applied += 1
        for warning in config.warnings:
            log.warning("config: %s", warning)
        log.info(
            "config reloaded from %s: %d accounts, %d keys",
            self.path,
            len(config.accounts),
            len(config.keys),
        )
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            current = _signature(self.path)
            if current is not None and current != self._seen:
                await self.reload_now()
