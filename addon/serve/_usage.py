"""What the admin page shows about traffic: requests and estimated tokens per account and per
gateway key over the last hour and day, and the recent failed requests with their error.

Kept in memory by this process (the last 24 hours, bounded): it is an operator's view of what
this instance served, not billing. Nothing here holds a token: accounts are ids, keys are their
labels, and error messages come from our own (already redacted) error bodies.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from addon.accounts._secrets import redact
from translator import TranslatorError

__all__ = ["UsageEvent", "UsageLog", "error_of"]

HOUR = 3600.0
DAY = 24 * HOUR


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageEvent:
    at: float
    path: str
    status: int
    model: str
    account_id: str | None
    key_label: str | None
    tokens: int
    #: the OpenAI (or Anthropic) error object's message/type/code, for failed requests
    error: dict[str, Any] | None


def error_of(
    response: web.StreamResponse, status: int, error: TranslatorError | None = None
) -> dict[str, Any] | None:
    """The error a failed request answered with: `error` (the one a stream ended with), else
    read from a JSON error body, else a note with the final status."""
    if status < 400:
        return None
    if error is not None:
        return {
            "message": redact(error.message)[:500],
            "type": error.type,
            "code": error.code,
        }
    body = getattr(response, "body", None)
    if isinstance(body, bytes | bytearray) and body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            return {
                "message": redact(str(error.get("message", "")))[:500],
                "type": error.get("type"),
                "code": error.get("code"),
            }
    return {
        "message": f"the reply ended with an error (status {status}) after it had started",
        "type": None,
        "code": None,
    }


class UsageLog:
    """The last day of requests, bounded to `max_events` (oldest dropped first)."""

    def __init__(self, clock: Callable[[], float], *, max_events: int = 200_000) -> None:
        self._clock = clock
        self._events: collections.deque[UsageEvent] = collections.deque(maxlen=max_events)

    def add(self, event: UsageEvent) -> None:
        self._events.append(event)
        self._prune(event.at)

    def _prune(self, now: float) -> None:
        while self._events and self._events[0].at < now - DAY:
            self._events.popleft()

    def summary(self) -> dict[str, Any]:
        """Per account id and per key label: requests and tokens in the last hour and day, and
        24 hourly buckets (oldest first) for a chart; totals the same way."""
        now = self._clock()
        self._prune(now)

        def blank() -> dict[str, Any]:
            return {
                "hour": {"requests": 0, "tokens": 0},
                "day": {"requests": 0, "tokens": 0},
                "hourly_requests": [0] * 24,
                "hourly_tokens": [0] * 24,
            }

        accounts: dict[str, dict[str, Any]] = {}
        keys: dict[str, dict[str, Any]] = {}
        total = blank()
        for event in self._events:
            age = now - event.at
            if age < 0 or age >= DAY:
                continue
            bucket = 23 - int(age // HOUR)
            targets = [total]
            if event.account_id is not None:
                targets.append(accounts.setdefault(event.account_id, blank()))
            if event.key_label is not None:
                targets.append(keys.setdefault(event.key_label, blank()))
            for target in targets:
                target["day"]["requests"] += 1
                target["day"]["tokens"] += event.tokens
                if age < HOUR:
                    target["hour"]["requests"] += 1
                    target["hour"]["tokens"] += event.tokens
                target["hourly_requests"][bucket] += 1
                target["hourly_tokens"][bucket] += event.tokens
        return {"total": total, "accounts": accounts, "keys": keys}

    def failures(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent failed requests, newest first."""
        out: list[dict[str, Any]] = []
        for event in reversed(self._events):
            if event.error is None:
                continue
            out.append(
                {
                    "at": event.at,
                    "path": event.path,
                    "status": event.status,
                    "model": event.model,
                    "account_id": event.account_id,
                    "key_label": event.key_label,
                    "error": event.error,
                }
            )
            if len(out) >= limit:
                break
        return out
