"""Host names as a guard must compare them: one spelling per host.

`api.openai.com.` (the fully qualified form with its trailing dot), `API.OpenAI.com` and
`api。openai.com` (an ideographic full stop, which IDNA maps to a dot) all reach the same
server; a guard that compares raw strings lets them pass. Every comparison of a host against
`intercept_hosts` or the guard's lists goes through `normalise_host` on both sides.
"""

from __future__ import annotations

import contextlib

__all__ = ["normalise_host", "normalise_hosts"]


def normalise_host(host: str) -> str:
    """Lower case, no trailing dots, no IPv6 brackets, Unicode labels in their IDNA (xn--)
    form. A name IDNA cannot encode is kept lower-cased: it cannot match a listed name either."""
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.lower()
    if not name.isascii():
        with contextlib.suppress(UnicodeError):
            name = name.encode("idna").decode("ascii").lower()
    return name.rstrip(".")


def normalise_hosts(hosts: object) -> frozenset[str]:
    """The normalised, non-empty names of an option's list."""
    if not isinstance(hosts, (list, tuple, set, frozenset)):
        return frozenset()
    return frozenset(n for n in (normalise_host(str(h)) for h in hosts) if n)
