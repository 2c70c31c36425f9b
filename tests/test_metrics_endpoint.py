"""addon.serve._metrics.endpoint_of: the bounded `endpoint` label of the request metrics."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from addon.serve._metrics import endpoint_of


async def _noop(request: web.Request) -> web.Response:
    return web.Response()


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        # routes with a parameter are labelled by their template, never by the value
        ("/v1/responses/resp_123", "/v1/responses/{id}"),
        ("/v1/models/kimi-k2", "/v1/models/{model_id}"),
        # only the catch-all stands for unknown URLs
        ("/no/such/path", "other"),
        ("/v1/responses/a/b", "other"),
    ],
)
async def test_endpoint_label(path, label):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _noop)
    app.router.add_get("/v1/responses/{id}", _noop)
    app.router.add_get("/v1/models/{model_id}", _noop)
    app.router.add_route("*", "/{tail:.*}", _noop)
    method = "POST" if path == "/v1/chat/completions" else "GET"
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    # endpoint_of reads only the request's match_info
    request = cast(web.Request, SimpleNamespace(match_info=match))
    assert endpoint_of(request) == label
