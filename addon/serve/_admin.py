"""The admin page (`/admin`) and its JSON API (`/admin/api/...`), behind the config's admin key.

Log-in: a form posts the admin key; it is compared in constant time (as a hash), and a random
session id goes back in a cookie that is HttpOnly (no script can read it), SameSite=Strict (no
other site can make the browser send it) and only names a server-side session, which ends after
`SESSION_TTL`, on log-out, or when the admin key changes. Scripts use the API with
`Authorization: Bearer <admin key>` instead. Log-in attempts are rate limited per client address.

The page is one static HTML file with a little JavaScript (no build step): it reads
`/admin/api/overview` and calls the same JSON endpoints a script would. Nothing here ever answers
with a token: accounts are shown by label and id, keys by label and a short id of their hash, and
a new key is shown once, in the answer that created it.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from addon.accounts._pool import AccountPool, AuthFailed, TransientFailure
from addon.accounts._secrets import constant_time_equal
from addon.process._config import DIALECTS
from addon.upstream._chat import ChatStats
from translator import TranslatorError

from ._metrics import RequestRecord
from ._ratelimit import CLIENT_ADDRESS_HEADER, RateLimiter
from ._reply import error_response, json_response
from ._usage import UsageEvent, UsageLog, error_of

__all__ = ["AdminSessions", "add_admin_routes", "usage_recorder"]

COOKIE = "kimi_free_api_admin"
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 100
PAGE = Path(__file__).with_name("_admin_page.html")


class AdminSessions:
    """Server-side sessions: the cookie holds a random id; only its hash is kept, with the
    admin key hash it was opened under and its expiry."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._sessions: dict[str, tuple[str, float]] = {}

    @staticmethod
    def _digest(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def open(self, admin_hash: str) -> str:
        now = self._clock()
        self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
        while len(self._sessions) >= MAX_SESSIONS:  # the oldest go first
            del self._sessions[min(self._sessions, key=lambda k: self._sessions[k][1])]
        session_id = secrets.token_urlsafe(32)
        self._sessions[self._digest(session_id)] = (admin_hash, now + SESSION_TTL)
        return session_id

    def valid(self, session_id: str, admin_hash: str | None) -> bool:
        if not session_id or admin_hash is None:
            return False
        found = self._sessions.get(self._digest(session_id))
        return (
            found is not None
            and found[1] > self._clock()
            and constant_time_equal(found[0], admin_hash)
        )

    def close(self, session_id: str) -> None:
        self._sessions.pop(self._digest(session_id), None)


class _Refusal(Exception):
    """An admin request that cannot be done: answered as an error with this status."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def _error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}.get(
        status, "invalid_request_error"
    )
    return error_response(
        TranslatorError(message, status=status, type=kind, code=code, param=param)
    )


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={
            "cache-control": "no-store",
            "x-frame-options": "DENY",
            "content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            "referrer-policy": "no-referrer",
        },
    )


def _login_page(message: str = "") -> str:
    note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kimi-free-api admin: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 15px system-ui, sans-serif; background: #f4f5f7; display: grid;
       place-items: center; min-height: 100vh; margin: 0; }}
form {{ background: #fff; padding: 2em; border-radius: 8px; box-shadow: 0 1px 4px #0002;
       display: grid; gap: .8em; width: 22em; }}
input, button {{ font: inherit; padding: .5em; }}
.error {{ color: #b00020; margin: 0; }}
</style></head>
<body><form method="post" action="/admin/login">
<h1>kimi-free-api admin</h1>{note}
<label>Admin key <input type="password" name="key" id="key" autocomplete="current-password"
 required autofocus></label>
<button type="submit" id="login">Log in</button>
</form></body></html>"""


#: probes and pages that are not API traffic
_NOT_USAGE = ("/healthz", "/readyz", "/metrics", "/ping", "other")


def usage_recorder(
    pool: AccountPool, usage: UsageLog, clock: Callable[[], float] = time.time
) -> Callable[[web.Request, web.StreamResponse, RequestRecord, ChatStats], Awaitable[None]]:
    """The relay observer that feeds the usage log: API requests (answered, or failed with
    their error), by account and by the gateway key's label."""

    async def key_label(request: web.Request) -> str | None:
        value = request.headers.get("x-api-key", "") or request.headers.get("authorization", "")
        scheme, _, rest = value.strip().partition(" ")
        value = rest if scheme.lower() == "bearer" else value
        for part in value.split(","):
            part = part.strip()
            if part.startswith("sk-"):
                grant = await pool.store.verify_gateway_key(part)
                if grant is not None:
                    return grant.label
        return None

    async def observe(
        request: web.Request,
        response: web.StreamResponse,
        record: RequestRecord,
        stats: ChatStats,
    ) -> None:
        if record.endpoint in _NOT_USAGE or record.endpoint.startswith("/admin"):
            return
        if record.model == "-" and record.status < 400:
            return  # /v1/models and the like: not usage
        usage.add(
            UsageEvent(
                at=clock(),
                path=record.path,
                status=record.status,
                model=record.model,
                account_id=stats.account_id,
                key_label=await key_label(request),
                tokens=stats.tokens,
                error=error_of(response, record.status, stats.error),
            )
        )

    return observe


def add_admin_routes(
    app: web.Application,
    *,
    pool: AccountPool,
    usage: UsageLog,
    reapply: Callable[[], Awaitable[object]],
    clock: Callable[[], float] = time.time,
    login_limit: RateLimiter | None = None,
    delete_due: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Register `/admin` and `/admin/api/...`. `reapply` re-syncs the config's keys after the
    set of accounts changed (a key without an account list includes admin-added accounts).
    `delete_due` runs the conversation cleanup now (a removed account's conversations are
    deleted at Kimi before its rows go)."""
    sessions = AdminSessions(clock)
    limit = login_limit or RateLimiter(burst=10, per=6.0, clock=time.monotonic)
    store = pool.store

    def logged_in(request: web.Request) -> bool:
        if pool.is_admin(request.headers.get("authorization", "")):
            return True
        return sessions.valid(request.cookies.get(COOKIE, ""), pool.admin_hash)

    def api(
        handler: Callable[[web.Request], Any],
    ) -> Callable[[web.Request], Any]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if pool.admin_hash is None:
                return _error(404, "the admin API is off: set admin_key in the config", "no_admin")
            if not logged_in(request):
                return _error(
                    401, "an admin key or an admin session is required", "invalid_api_key"
                )
            try:
                result: web.StreamResponse = await handler(request)
            except _Refusal as refusal:
                return _error(refusal.status, refusal.message, refusal.code, refusal.param)
            result.headers["cache-control"] = "no-store"
            return result

        return guarded

    async def body_of(request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise _Refusal(
                415, "send a JSON body (content-type: application/json)", "unsupported_media_type"
            )
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            raise _Refusal(400, "the request body is not valid JSON", "invalid_json") from None
        if not isinstance(body, dict):
            raise _Refusal(400, "the request body must be a JSON object", "invalid_json")
        return body

    def text_field(body: dict[str, Any], name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > 4096:
            raise _Refusal(
                400,
                f"{name} must be a non-empty string of at most 4096 characters",
                "invalid_value",
                name,
            )
        return value.strip()

    async def account_or_404(request: web.Request) -> str:
        account_id = request.match_info["account_id"]
        if await store.get_account(account_id) is None:
            raise _Refusal(404, "no such account", "account_not_found")
        return account_id

    # -- pages ------------------------------------------------------------------------------

    async def page(request: web.Request) -> web.StreamResponse:
        if pool.admin_hash is None:
            return _html(
                "<!doctype html><title>kimi-free-api admin</title><p>The admin page is off: set "
                "<code>admin_key</code> (or <code>admin_key_env</code>) in the config file.</p>",
                404,
            )
        if not logged_in(request):
            return _html(_login_page())
        return _html(PAGE.read_text(encoding="utf-8"))

    async def login(request: web.Request) -> web.StreamResponse:
        if pool.admin_hash is None:
            return _html(_login_page("the admin page is off: no admin key is configured"), 404)
        client = request.headers.get(CLIENT_ADDRESS_HEADER) or request.remote or "-"
        wait = limit.take(client)
        if wait > 0:
            response = _html(
                _login_page(f"too many attempts; try again in {math.ceil(wait)} s"), 429
            )
            response.headers["retry-after"] = str(math.ceil(wait))
            return response
        form = await request.post()
        key = form.get("key")
        if not isinstance(key, str) or not pool.is_admin(key):
            return _html(_login_page("wrong admin key"), 401)
        admin_hash = pool.admin_hash
        assert admin_hash is not None
        response = web.Response(status=303, headers={"location": "/admin"})
        response.set_cookie(
            COOKIE,
            sessions.open(admin_hash),
            max_age=int(SESSION_TTL),
            path="/admin",
            httponly=True,
            samesite="Strict",
            secure=request.headers.get("x-forwarded-proto", "").lower() == "https",
        )
        return response

    async def logout(request: web.Request) -> web.StreamResponse:
        sessions.close(request.cookies.get(COOKIE, ""))
        response = web.Response(status=303, headers={"location": "/admin"})
        response.del_cookie(COOKIE, path="/admin")
        return response

    # -- API --------------------------------------------------------------------------------

    async def overview(request: web.Request) -> web.StreamResponse:
        summary = usage.summary()
        blank = {
            "hour": {"requests": 0, "tokens": 0},
            "day": {"requests": 0, "tokens": 0},
            "hourly_requests": [0] * 24,
            "hourly_tokens": [0] * 24,
        }
        accounts = [
            {**account, "usage": summary["accounts"].get(account["id"], blank)}
            for account in await pool.describe()
        ]
        keys = [
            {**key, "usage": summary["keys"].get(key["label"], blank)}
            for key in await store.list_gateway_keys()
        ]
        return json_response(
            {
                "now": clock(),
                "max_concurrency": pool.max_concurrency,
                "accounts": accounts,
                "keys": keys,
                "total": summary["total"],
                "failures": usage.failures(),
            }
        )

    async def add_account(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        label = text_field(body, "label")
        token = text_field(body, "refresh_token")
        if any(c.isspace() or c == "," for c in token):
            raise _Refusal(
                400,
                "refresh_token contains whitespace or a comma",
                "invalid_value",
                "refresh_token",
            )
        dialect = body.get("dialect") or None
        if dialect is not None and dialect not in DIALECTS:
            raise _Refusal(
                400, f"dialect must be one of {', '.join(DIALECTS)}", "invalid_value", "dialect"
            )
        owner = await store.configured_label_owner(label)
        if owner is not None and not owner[1]:
            raise _Refusal(
                409,
                f"the label {label!r} belongs to an account of the config file",
                "label_taken",
                "label",
            )
        account = await store.upsert_config_account(label, token, dialect=dialect, now=clock())
        await store.mark_added_by_admin(account.id)
        await reapply()
        view = await store.get_account(account.id)
        assert view is not None
        return json_response({"account": view.view.to_json()}, 201)

    async def check_account(request: web.Request) -> web.StreamResponse:
        account_id = await account_or_404(request)
        account = await store.get_account(account_id)
        assert account is not None
        await pool.invalidate_access(account)
        try:
            await pool.access_token(account)
        except AuthFailed:
            live = False
        except TransientFailure as exc:
            raise _Refusal(
                503, f"cannot reach Kimi to check the account: {exc}", "upstream_unreachable"
            ) from None
        else:
            live = True
            await pool.mark_ok(account)
        current = await store.get_account(account_id)
        assert current is not None
        return json_response({"live": live, "account": current.view.to_json()})

    def set_disabled(disabled: bool) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            account_id = await account_or_404(request)
            await store.set_disabled(account_id, disabled, now=clock())
            current = await store.get_account(account_id)
            assert current is not None
            return json_response({"account": current.view.to_json()})

        return handler

    async def remove_account(request: web.Request) -> web.StreamResponse:
        account_id = await account_or_404(request)
        account = await store.get_account(account_id)
        assert account is not None
        if account.view.source == "config" and not account.view.added_by_admin:
            raise _Refusal(
                409,
                "this account comes from the config file: remove it there",
                "configured_account",
            )
        if pool.in_flight(account_id):
            raise _Refusal(
                409,
                "the account is serving a reply right now; disable it first "
                "and remove it when it is idle",
                "account_busy",
            )
        if await store.make_deletions_due(account_id, now=clock()) and delete_due is not None:
            await delete_due()
        await store.delete_account(account_id)
        await reapply()
        return json_response({"deleted": True, "id": account_id})

    async def create_key(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        label = text_field(body, "label")
        raw = body.get("accounts")
        if raw is None:
            ids = await store.server_account_ids()
            if not ids:
                raise _Refusal(
                    400,
                    "there is no server-side account yet: add one first",
                    "no_accounts",
                    "accounts",
                )
        else:
            if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
                raise _Refusal(
                    400,
                    "accounts must be a non-empty list of account ids",
                    "invalid_value",
                    "accounts",
                )
            known = await store.get_accounts(raw)
            missing = [x for x in raw if x not in known]
            if missing:
                raise _Refusal(
                    400, f"no such account: {missing[0]}", "account_not_found", "accounts"
                )
            ids = list(dict.fromkeys(raw))
        key = "sk-kfa-" + secrets.token_urlsafe(32)
        key_id = await store.create_gateway_key(key, label=label, account_ids=ids, now=clock())
        # The only answer that ever holds the key: the page shows it once.
        return json_response({"id": key_id, "label": label, "accounts": ids, "key": key}, 201)

    async def revoke_key(request: web.Request) -> web.StreamResponse:
        outcome = await store.revoke_gateway_key(request.match_info["key_id"])
        if outcome == "missing":
            raise _Refusal(404, "no such key", "key_not_found")
        if outcome == "config":
            raise _Refusal(
                409, "this key comes from the config file: remove it there", "configured_key"
            )
        return json_response({"revoked": True, "id": request.match_info["key_id"]})

    app.router.add_get("/admin", page)
    app.router.add_get("/admin/", page)
    app.router.add_post("/admin/login", login)
    app.router.add_post("/admin/logout", logout)
    app.router.add_get("/admin/api/overview", api(overview))
    app.router.add_post("/admin/api/accounts", api(add_account))
    app.router.add_post("/admin/api/accounts/{account_id}/check", api(check_account))
    app.router.add_post("/admin/api/accounts/{account_id}/disable", api(set_disabled(True)))
    app.router.add_post("/admin/api/accounts/{account_id}/enable", api(set_disabled(False)))
    app.router.add_delete("/admin/api/accounts/{account_id}", api(remove_account))
    app.router.add_post("/admin/api/keys", api(create_key))
    app.router.add_delete("/admin/api/keys/{key_id}", api(revoke_key))
