"""The loopback relay: the HTTP routes the proxy serves (see docs/architecture.md for why a relay).

mitmproxy routes every request it serves here; only requests carrying this process's secret
header are accepted, so no other local program can use the relay as a door to the accounts.
Every response carries CORS headers, so browser clients work too.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from addon.accounts._pool import AccessDenied, AccountPool, AuthFailed, TransientFailure
from addon.mitm._credentials import (
    CREDENTIAL_HANDLE_HEADER,
    CREDENTIAL_HEADERS,
    HELD_BODY,
    CredentialVault,
)
from addon.upstream._chat import ChatService, ChatStats
from addon.upstream._kimi import call_counter
from addon.upstream._model_catalog import ModelCatalogs
from translator import LocalProtocolError, TranslatorError
from translator.chat._models import model_list

from ._body import DEFAULT_MAX_REQUEST_BYTES, read_json
from ._messages import add_messages_routes, anthropic_error_response
from ._metrics import Metrics, RequestRecord, endpoint_of
from ._openapi import openapi_bytes
from ._ratelimit import CLIENT_ADDRESS_HEADER, RateLimiter
from ._reply import JsonReply, Reply, SseReply, error_response, json_response
from ._responses import ResponsesService

__all__ = ["RELAY_SECRET_HEADER", "build_app"]

log = logging.getLogger("kimi_free_api")

RELAY_SECRET_HEADER = "x-kimi-free-api-relay"

CORS_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, POST, DELETE, OPTIONS",
    "access-control-allow-headers": "authorization, content-type, openai-organization, "
    "openai-project, x-stainless-*, *",
    "access-control-max-age": "86400",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: paths whose log line reports the chat service's status (a stream's failure comes after 200)
_SERVED_BY_CHAT = ("/completions", "/messages", "/responses")

#: told about every finished request (the admin page's usage log)
RequestObserver = Callable[
    [web.Request, web.StreamResponse, RequestRecord, ChatStats], Awaitable[None]
]

STATS = web.RequestKey("kimi_free_api_stats", ChatStats)


def _openai_error(status: int, message: str, *, type_: str, code: str | None) -> web.Response:
    error = TranslatorError(message, status=status, type=type_, code=code)
    return error_response(error)


def _is_messages_path(path: str) -> bool:
    """Under the Anthropic Messages API: /v1/messages, /messages and anything below them."""
    for prefix in ("/v1/messages", "/messages"):
        if path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def _bearer(request: web.Request) -> str:
    value = request.headers.get("authorization", "")
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _with_credentials(request: web.Request, vault: CredentialVault) -> web.Request:
    """The request with the client's credential headers back in place of the vault's handle
    (see addon/mitm/_credentials.py). No handle: as it came (tests and the benchmark call the relay
    directly); an unknown or spent handle: no credential at all."""
    handle = request.headers.get(CREDENTIAL_HANDLE_HEADER)
    if handle is None:
        return request
    headers = CIMultiDict(
        (name, value)
        for name, value in request.headers.items()
        if name.lower() != CREDENTIAL_HANDLE_HEADER and name.lower() not in CREDENTIAL_HEADERS
    )
    held = vault.take(handle)
    if held is None:
        return request.clone(headers=headers)
    for name, value in held.headers:
        headers.add(name, value)
    restored = request.clone(headers=headers)
    if held.body is not None:
        restored[HELD_BODY] = held.body
    return restored


def build_app(
    *,
    secret: str,
    chat: ChatService,
    pool: AccountPool,
    wall_clock: Callable[[], float],
    metrics: Metrics | None = None,
    routes: Sequence[Callable[[web.Application], None]] = (),
    on_request: Sequence[RequestObserver] = (),
    token_check_limit: RateLimiter | None = None,
    catalogs: ModelCatalogs | None = None,
    credentials: CredentialVault | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> web.Application:
    """The relay app. `routes` add more routes (before the catch-all 404); `metrics` is fed
    one `RequestRecord` per request; `catalogs` (Connect dialect) lists Kimi's own models on
    `/v1/models`; `credentials` is the vault the addon hands credentials over in
    (addon/mitm/_credentials.py)."""
    vault = credentials if credentials is not None else CredentialVault()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(RELAY_SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            return _openai_error(403, "forbidden", type_="permission_error", code="forbidden")
        request = _with_credentials(request, vault)
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=CORS_HEADERS)
        started = time.monotonic()
        counter = [0]
        token = call_counter.set(counter)
        stats = ChatStats()
        request[STATS] = stats
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _openai_error(
                exc.status, exc.reason, type_="invalid_request_error", code=None
            )
        except TranslatorError as exc:
            # A body refused by read_json (too large, bad encoding, bad JSON) in any route.
            stats.status = exc.status
            response = error_response(exc)
        except RecursionError:
            # JSON nested deeper than any parser in the chain could follow: the client's fault.
            stats.status = 400
            response = error_response(
                LocalProtocolError("the request body is nested too deeply", code="invalid_json")
            )
        except Exception:
            # A bug of ours: still an OpenAI-shaped answer, and the traceback in the log (it
            # holds no token: tokens are never in locals that get formatted).
            log.exception("internal error while serving %s %s", request.method, request.path)
            stats.status = 500
            response = _openai_error(
                500,
                "kimi-free-api hit an internal error",
                type_="server_error",
                code="internal_error",
            )
        finally:
            call_counter.reset(token)
        if not response.prepared:
            response.headers.update(CORS_HEADERS)
        stats.upstream_calls = counter[0]
        record = RequestRecord(
            method=request.method,
            path=request.path,
            endpoint=endpoint_of(request),
            status=stats.status if request.path.endswith(_SERVED_BY_CHAT) else response.status,
            model=stats.model,
            dialect=stats.dialect,
            account=stats.account_index,
            ttfb=None if stats.first_byte_at is None else stats.first_byte_at - started,
            duration=time.monotonic() - started,
            upstream_calls=stats.upstream_calls,
            failovers=stats.failovers,
        )
        # `request_fields` is what `--log-format json` writes (see addon/process/_logging.py).
        log.info("%s", record.text(), extra={"request_fields": record.fields()})
        if metrics is not None:
            metrics.observe(record)
        for observe in on_request:
            try:
                await observe(request, response, record, stats)
            except Exception:  # a broken observer must not break the reply
                log.exception("request observer failed")
        return response

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        stats = request[STATS]
        try:
            body: Any = await read_json(request, limit=max_request_bytes)
        except TranslatorError as err:
            stats.status = err.status
            return error_response(err)
        stream = isinstance(body, dict) and body.get("stream") is True
        reply: Reply = SseReply(request) if stream else JsonReply()
        return await chat.complete(body, _bearer(request), reply, stats)

    responses = ResponsesService(
        chat=chat, store=chat.keeper.store, pool=pool, wall_clock=wall_clock
    )

    async def create_response(request: web.Request) -> web.StreamResponse:
        stats = request[STATS]
        try:
            body = await read_json(request, limit=max_request_bytes)
        except LocalProtocolError as err:
            stats.status = err.status
            return error_response(err)
        return await responses.create(body, _bearer(request), request, stats)

    async def get_response(request: web.Request) -> web.StreamResponse:
        return await responses.retrieve(request.match_info["id"], _bearer(request))

    async def delete_response(request: web.Request) -> web.StreamResponse:
        return await responses.delete(request.match_info["id"], _bearer(request))

    async def listing(request: web.Request) -> dict[str, Any]:
        if catalogs is not None:
            return await catalogs.listing(_bearer(request), int(wall_clock()))
        return model_list(int(wall_clock()))

    async def models(request: web.Request) -> web.StreamResponse:
        return json_response(await listing(request))

    async def model(request: web.Request) -> web.StreamResponse:
        # The same models /v1/models lists (Kimi's own catalog where it has one).
        model_id = request.match_info["model_id"]
        for entry in (await listing(request))["data"]:
            if entry["id"] == model_id:
                return json_response(entry)
        return _openai_error(
            404,
            f"The model '{model_id}' does not exist (GET /v1/models lists the models)",
            type_="invalid_request_error",
            code="model_not_found",
        )

    async def warm_up(request: web.Request) -> web.StreamResponse:
        # Claude Code sends `HEAD /` before its first request to open the connection.
        return web.Response(status=200)

    async def ping(request: web.Request) -> web.StreamResponse:
        return web.Response(text="pong")

    async def openapi(request: web.Request) -> web.StreamResponse:
        return web.Response(body=openapi_bytes(), content_type="application/json")

    # Each check may refresh at Kimi and add a store row: 10 at once per client, then 1 per 6 s.
    check_limit = token_check_limit or RateLimiter(burst=10, per=6.0, clock=time.monotonic)

    async def token_check(request: web.Request) -> web.StreamResponse:
        client = request.headers.get(CLIENT_ADDRESS_HEADER) or request.remote or "-"
        wait = check_limit.take(client)
        if wait > 0:
            response = _openai_error(
                429,
                f"too many token checks from this address; retry in {math.ceil(wait)} s",
                type_="rate_limit_error",
                code="rate_limit_exceeded",
            )
            response.headers["retry-after"] = str(math.ceil(wait))
            return response
        try:
            body = await read_json(request, limit=max_request_bytes)
        except TranslatorError as err:
            return error_response(err)
        try:
            token = body["token"]
            if not isinstance(token, str) or not token:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return error_response(
                LocalProtocolError('expected {"token": "<refresh token>"}', param="token")
            )
        try:
            accounts = await pool.resolve(token)
            for account in accounts:
                await pool.access_token(account)
        except AccessDenied as exc:
            if exc.status == 400:  # too many tokens: say so, as the chat route does
                return error_response(exc)
            return json_response({"live": False})
        except AuthFailed:
            return json_response({"live": False})
        except TransientFailure as exc:
            return _openai_error(
                503,
                f"cannot reach Kimi to check the token: {exc}",
                type_="upstream_error",
                code="upstream_unreachable",
            )
        return json_response({"live": True})

    async def accounts(request: web.Request) -> web.StreamResponse:
        if not pool.is_admin(_bearer(request)):
            return _openai_error(
                401,
                "an admin key is required for /v1/accounts",
                type_="authentication_error",
                code="invalid_api_key",
            )
        return json_response({"object": "list", "data": await pool.describe()})

    async def not_found(request: web.Request) -> web.StreamResponse:
        error = TranslatorError(
            f"Unknown request URL: {request.method} {request.path}. "
            "This proxy serves /v1/chat/completions, /v1/responses, /v1/messages, /v1/models, "
            "/token/check and /ping.",
            status=404,
            type="invalid_request_error",
            code="unknown_url",
        )
        if _is_messages_path(request.path):
            # An Anthropic client (a route of the Messages API we do not serve, such as
            # batches, or the wrong method) gets Anthropic's error shape: not_found_error.
            return anthropic_error_response(error)
        return error_response(error)

    app = web.Application(middlewares=[guard], client_max_size=max_request_bytes)
    for prefix in ("/v1", ""):
        app.router.add_post(prefix + "/chat/completions", chat_completions)
        app.router.add_get(prefix + "/models", models)
        app.router.add_get(prefix + "/models/{model_id}", model)
        app.router.add_post(prefix + "/responses", create_response)
        app.router.add_get(prefix + "/responses/{id}", get_response)
        app.router.add_delete(prefix + "/responses/{id}", delete_response)
    add_messages_routes(
        app, chat=chat, pool=pool, stats_key=STATS, max_request_bytes=max_request_bytes
    )
    app.router.add_route("HEAD", "/", warm_up)
    app.router.add_get("/v1/accounts", accounts)
    app.router.add_post("/token/check", token_check)
    app.router.add_get("/ping", ping)
    app.router.add_get("/openapi.json", openapi)
    for add_routes in routes:
        add_routes(app)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
