"""A per-client-address rate limit (token buckets), for routes that cost a Kimi call on demand.

`/token/check` refreshes every token it is given at Kimi and remembers it in the store, so an
unlimited client could make the proxy hammer Kimi's refresh endpoint and grow the store. The
client address comes from the addon (`CLIENT_ADDRESS_HEADER`): the relay itself only ever sees
mitmproxy on loopback, and it trusts the header only on requests that carry the relay secret.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

__all__ = ["CLIENT_ADDRESS_HEADER", "RateLimiter"]

#: set by the addon on every request it routes to the relay (a client's own value is replaced)
CLIENT_ADDRESS_HEADER = "x-kimi-free-api-client"


class RateLimiter:
    """`burst` requests at once per key, then one every `per` seconds. Remembers at most
    `max_keys` keys (the least recently seen are forgotten: a fresh bucket is full anyway)."""

    def __init__(
        self, *, burst: int, per: float, clock: Callable[[], float], max_keys: int = 10_000
    ) -> None:
        self.burst = burst
        self.per = per
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, key: str) -> float:
        """Spend one request for `key`: 0.0 when allowed, else the seconds until one is."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) / self.per)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) * self.per
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
