"""The models Kimi offers (Connect dialect), fetched with `GetAvailableModels` and cached.

- `GET /v1/models` (Connect dialect): the OpenAI ids of Kimi's own catalog (see
  `translator.connect._models`), fetched with an account the client's credentials name. When
  no account is usable or the call fails, the static `MODEL_CATALOG` list is the answer.
- Chat (Connect dialect): the model name is looked up in the cached catalog, else in the
  catalog of the public record (`BUILTIN_CATALOG`), to fill the scenario, model and agent
  fields. A `kimi-k…` name neither knows fetches the catalog first (once per TTL), so a model
  Kimi adds works without a release.

The cache is per base URL and process: an answer lives `ttl` seconds (300, as public clients
do), a failure `failure_ttl` seconds (so a broken route is not asked at every request).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from addon.accounts._pool import Account, AccountPool
from translator import ChatPlan, RemoteProtocolError, TranslatorError
from translator.chat._models import model_list
from translator.connect._models import (
    BUILTIN_CATALOG,
    ModelCatalog,
    available_models_call,
    catalog_changes,
    catalog_model_list,
    read_model_catalog,
    with_catalog,
)

from ._kimi import KimiClient

__all__ = ["ModelCatalogs"]

log = logging.getLogger("kimi_free_api")


@dataclass(frozen=True, slots=True)
class _Entry:
    catalog: ModelCatalog | None  # the last good answer, if any
    at: float
    ok: bool  # the last fetch worked


class ModelCatalogs:
    def __init__(
        self,
        kimi: KimiClient,
        pool: AccountPool,
        *,
        clock: Callable[[], float],
        ttl: float = 300.0,
        failure_ttl: float = 30.0,
    ) -> None:
        self.kimi = kimi
        self.pool = pool
        self.clock = clock
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self._entries: dict[str, _Entry] = {}
        #: GetAvailableModels calls made (tests and /metrics-style counting)
        self.fetches = 0

    def cached(self) -> ModelCatalog | None:
        """The last catalog fetched for this base URL (even if older than the TTL)."""
        entry = self._entries.get(self.kimi.base_url)
        return None if entry is None else entry.catalog

    def _fresh(self) -> bool:
        entry = self._entries.get(self.kimi.base_url)
        if entry is None:
            return False
        ttl = self.ttl if entry.ok else self.failure_ttl
        return self.clock() - entry.at < ttl

    async def fetch(self, token: str) -> ModelCatalog | None:
        """The catalog, fetched with `token` unless a fresh answer (or failure) is cached."""
        if not self._fresh():
            self.fetches += 1
            catalog: ModelCatalog | None = None
            try:
                response = await self.kimi.send(available_models_call(), token=token)
                if response.status_code == 200:
                    catalog = read_model_catalog(response.content)
                else:
                    log.warning("GetAvailableModels answered HTTP %d", response.status_code)
            except RemoteProtocolError as exc:
                log.warning("GetAvailableModels failed: %s", exc.code or type(exc).__name__)
            # a failure keeps the last good catalog (for the chat path) and is not retried
            # before failure_ttl
            kept = catalog or self.cached()
            self._entries[self.kimi.base_url] = _Entry(kept, self.clock(), catalog is not None)
            if catalog is None:
                return None
        return self.cached()

    async def listing(self, credentials: str, created: int) -> dict[str, Any]:
        """The `/v1/models` body: Kimi's catalog, or the static list when it cannot be had."""
        try:
            accounts = await self.pool.resolve(credentials)
        except TranslatorError:
            return model_list(created)
        catalog = self.cached() if self._fresh() else None
        if catalog is None:
            catalog = await self._with_some_account(accounts)
        return model_list(created) if catalog is None else catalog_model_list(catalog, created)

    async def _with_some_account(self, accounts: Sequence[Account]) -> ModelCatalog | None:
        for account in accounts:
            try:
                token = await self.pool.access_token(account)
            except Exception as exc:  # any refresh failure: try the next account
                log.warning("no token for the model list: %s", type(exc).__name__)
                continue
            return await self.fetch(token)
        return None

    async def apply(self, plan: ChatPlan, token: str) -> ChatPlan:
        """`plan` with the catalog's scenario, model and agent fields for its model name."""
        catalog = self.cached()
        known = catalog is not None and catalog_changes(plan.model, catalog) is not None
        unknown_kimi_name = (
            not known
            and catalog_changes(plan.model, BUILTIN_CATALOG) is None
            and plan.model.lower().startswith("kimi-k")
        )
        if unknown_kimi_name and not self._fresh():
            catalog = await self.fetch(token) or catalog
        if catalog is not None and catalog_changes(plan.model, catalog) is not None:
            return with_catalog(plan, catalog)
        return with_catalog(plan, BUILTIN_CATALOG)
