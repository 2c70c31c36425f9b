"""The account store's schema (as a list of migrations) and the values it hands out.

Kept apart from `_store.py` so the store module stays about its transactions. `Account` carries
tokens but never shows them in `repr`; `AccountView` carries none at all.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ACCOUNT_COLUMNS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "VIEW_COLUMNS",
    "Account",
    "AccountView",
    "Exchange",
    "GatewayKey",
    "Health",
    "PendingDeletion",
    "Source",
    "account_from_row",
    "view_from_row",
]

Health = Literal["ok", "cooling", "dead"]
Source = Literal["client", "config"]

# Entry i brings a file from `PRAGMA user_version` i to i + 1. Never edit a published entry:
# append one. Statements are separated by ";" (no ";" inside a statement), because
# `executescript` would commit the migration transaction half-way.
MIGRATIONS: tuple[str, ...] = (
    # 1: accounts, their token fingerprints, gateway keys and the per-store secret.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        label TEXT,
        source TEXT NOT NULL CHECK (source IN ('client', 'config')),
        dialect TEXT,
        refresh_token TEXT NOT NULL,
        previous_refresh_token TEXT,
        access_token TEXT,
        access_expires_at REAL,
        health TEXT NOT NULL DEFAULT 'ok' CHECK (health IN ('ok', 'cooling', 'dead')),
        cooling_until REAL,
        last_error TEXT,
        requests INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        long_text_rounds INTEGER NOT NULL DEFAULT 0,
        window_started_at REAL,
        config_fingerprint TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX accounts_config_label ON accounts (label) WHERE source = 'config';
    CREATE TABLE token_fingerprints (
        fingerprint TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        created_at REAL NOT NULL
    );
    CREATE INDEX token_fingerprints_account ON token_fingerprints (account_id);
    CREATE TABLE gateway_keys (
        key_hash TEXT PRIMARY KEY, label TEXT NOT NULL, account_ids TEXT NOT NULL
    )
    """,
    # 2: automatic multi-turn (exchanges) and the conversation cleanup queue.
    """
    CREATE TABLE exchanges (
        key TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        conversation_id TEXT NOT NULL,
        parent_message_id TEXT NOT NULL,
        dialect TEXT,
        updated_at REAL NOT NULL
    );
    CREATE INDEX exchanges_updated ON exchanges (updated_at);
    CREATE TABLE pending_deletions (
        conversation_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        dialect TEXT,
        due_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX pending_deletions_due ON pending_deletions (due_at)
    """,
    # 3: the cross-process refresh lock, and claims on due deletions (one deleter each).
    """
    CREATE TABLE refresh_locks (
        account_id TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    ALTER TABLE pending_deletions ADD COLUMN claimed_by TEXT;
    ALTER TABLE pending_deletions ADD COLUMN claimed_until REAL
    """,
    # 4: stored Responses API answers (previous_response_id; see _store_responses.py).
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        conversation_id TEXT NOT NULL,
        previous_response_id TEXT,
        dialect TEXT,
        response TEXT NOT NULL,
        input_items TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX responses_conversation ON responses (conversation_id, created_at)
    """,
    # 5: the admin page: accounts it added or disabled, and gateway keys it created.
    """
    ALTER TABLE accounts ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN added_by_admin INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE gateway_keys ADD COLUMN source TEXT NOT NULL DEFAULT 'config';
    ALTER TABLE gateway_keys ADD COLUMN created_at REAL
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

VIEW_COLUMNS = (
    "id, label, source, dialect, health, cooling_until, last_error, requests, failures, "
    "long_text_rounds, window_started_at, access_expires_at, created_at, updated_at, "
    "disabled, added_by_admin"
)
ACCOUNT_COLUMNS = VIEW_COLUMNS + ", refresh_token, previous_refresh_token, access_token"


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountView:
    """An account as an operator may see it: no token, ever."""

    id: str
    label: str | None
    source: Source
    dialect: str | None
    health: Health
    cooling_until: float | None
    last_error: str | None
    requests: int
    failures: int
    long_text_rounds: int
    window_started_at: float | None
    access_expires_at: float | None
    created_at: float
    updated_at: float
    #: the admin turned it off: no request uses it until it is enabled again
    disabled: bool = False
    #: added on the admin page (kept like a configured account, but not in the config file)
    added_by_admin: bool = False

    def to_json(self) -> dict[str, Any]:
        """A plain dict for `/v1/accounts`."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """One Kimi web account with its CURRENT tokens (a snapshot; the store has the truth).

    The token fields are excluded from `repr`, so logging an account never logs a token.
    """

    view: AccountView
    refresh_token: str = field(repr=False)
    #: the refresh token retired by the last rotation, kept only until the new tokens have
    #: worked once (`Store.confirm_rotation`); never sent to Kimi again
    previous_refresh_token: str | None = field(repr=False, default=None)
    access_token: str | None = field(repr=False, default=None)

    @property
    def id(self) -> str:
        return self.view.id

    @property
    def label(self) -> str | None:
        return self.view.label

    @property
    def health(self) -> Health:
        return self.view.health

    @property
    def access_expires_at(self) -> float | None:
        return self.view.access_expires_at


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayKey:
    """A configured client key: its label and the accounts it may use (ids)."""

    label: str
    account_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """Where the last answer of an automatic multi-turn conversation lives."""

    key: str
    account_id: str
    conversation_id: str
    parent_message_id: str
    dialect: str | None
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingDeletion:
    """A Kimi conversation to delete once `due_at` has passed."""

    account_id: str
    conversation_id: str
    dialect: str | None
    due_at: float
    attempts: int
    last_error: str | None


def view_from_row(row: sqlite3.Row) -> AccountView:
    return AccountView(
        id=row["id"],
        label=row["label"],
        source=row["source"],
        dialect=row["dialect"],
        health=row["health"],
        cooling_until=row["cooling_until"],
        last_error=row["last_error"],
        requests=row["requests"],
        failures=row["failures"],
        long_text_rounds=row["long_text_rounds"],
        window_started_at=row["window_started_at"],
        access_expires_at=row["access_expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        disabled=bool(row["disabled"]),
        added_by_admin=bool(row["added_by_admin"]),
    )


def account_from_row(row: sqlite3.Row) -> Account:
    return Account(
        view=view_from_row(row),
        refresh_token=row["refresh_token"],
        previous_refresh_token=row["previous_refresh_token"],
        access_token=row["access_token"],
    )
