"""Numbers: percentiles over samples, and what a process costs (CPU time, peak RSS).

Peak RSS is read from /proc/self/status (VmHWM) and reset per phase by writing "5" to
/proc/self/clear_refs (Linux >= 4.0), so each phase reports its own peak rather than the
lifetime peak; elsewhere it falls back to getrusage's lifetime ru_maxrss.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ProcessReading",
    "percentile",
    "raise_fd_limit",
    "read_process",
    "reset_peak_rss",
    "summary_ms",
]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds (NaN-free: an empty list gives zeros)."""
    if not seconds:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0}
    return {
        "p50": round(percentile(seconds, 50) * 1000, 3),
        "p95": round(percentile(seconds, 95) * 1000, 3),
        "p99": round(percentile(seconds, 99) * 1000, 3),
        "mean": round(sum(seconds) / len(seconds) * 1000, 3),
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessReading:
    cpu_s: float  # user + system CPU seconds of this process so far
    peak_rss_mb: float  # peak resident set since the last reset_peak_rss()
    rss_mb: float  # resident set now


def _proc_status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def read_process() -> ProcessReading:
    cpu = time.process_time()
    hwm = _proc_status_kb("VmHWM")
    rss = _proc_status_kb("VmRSS")
    if hwm is None:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in KiB on Linux and bytes on macOS.
        hwm = maxrss / 1024 if sys.platform == "darwin" else float(maxrss)
    return ProcessReading(
        cpu_s=cpu, peak_rss_mb=round(hwm / 1024, 1), rss_mb=round((rss or hwm) / 1024, 1)
    )


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def raise_fd_limit() -> int:
    """500 open streams need ~2,000 sockets in the proxy: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
