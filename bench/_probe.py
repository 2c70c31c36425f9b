"""What the proxy reports about itself during a phase: its CPU time, its peak RSS, and the
per-request counter of upstream calls from its one log line per request (`upstream_calls=N`).

Shared by the in-process proxy and the subprocess child (`_proxy_child.py`), so both report
exactly the same fields.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ._stats import read_process, reset_peak_rss

__all__ = ["RequestLog", "snapshot"]

_LINE = re.compile(r"/chat/completions status=(\d+) .*?ttfb=(\S+) .*?upstream_calls=(\d+)")


class RequestLog(logging.Handler):
    """Collects (status, upstream calls, relay TTFB ms) from the relay's per-request log line."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.requests: list[tuple[int, int, float | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _LINE.search(record.getMessage())
        if match is None:
            return
        ttfb = match.group(2)
        ttfb_ms = float(ttfb[:-2]) if ttfb.endswith("ms") else None
        self.requests.append((int(match.group(1)), int(match.group(3)), ttfb_ms))

    def install(self) -> None:
        logger = logging.getLogger("kimi_free_api")
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def remove(self) -> None:
        logging.getLogger("kimi_free_api").removeHandler(self)

    def drain(self) -> list[tuple[int, int, float | None]]:
        out, self.requests = self.requests, []
        return out


def snapshot(log: RequestLog) -> dict[str, Any]:
    """This process's reading plus the requests logged since the last snapshot; then the peak
    RSS is reset so the next phase reports its own."""
    reading = read_process()
    out = {
        "cpu_s": reading.cpu_s,
        "peak_rss_mb": reading.peak_rss_mb,
        "rss_mb": reading.rss_mb,
        "requests": log.drain(),
    }
    reset_peak_rss()
    return out
