"""Kimi calls as mitmproxy flows: redaction, the flow itself, and where it is handed."""

from __future__ import annotations

import json

from mitmproxy import http
from mitmproxy.addons.view import View
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.tools.web.app import flow_to_json

from addon.capture._upstream_flows import (
    REDACTED,
    UpstreamFlows,
    exchange_flow,
    keep_streamed_body,
    redact,
)
from addon.upstream._kimi import UpstreamExchange

ACCESS = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl"
REFRESH = "refresh-token-of-alice"
NEW_REFRESH = "rotated-refresh-token-0001"


def exchange(**fields) -> UpstreamExchange:
    base = {
        "method": "GET",
        "url": "https://www.kimi.com/api/auth/token/refresh",
        "request_headers": (("authorization", f"Bearer {REFRESH}"), ("x-msh-platform", "web")),
        "request_body": b"",
        "started": 1.0,
        "ended": 2.0,
        "status": 200,
        "response_headers": (
            ("content-type", "application/json"),
            ("set-cookie", f"kimi-auth={ACCESS}; Path=/"),
            ("content-encoding", "gzip"),
        ),
        "response_body": json.dumps(
            {"access_token": ACCESS, "refresh_token": NEW_REFRESH, "expires_in": 900}
        ).encode(),
        "body_decoded": True,
    }
    return UpstreamExchange(**(base | fields))


def test_every_credential_is_redacted_wherever_it_is():
    echo = f"echo {ACCESS} and {NEW_REFRESH} and {REFRESH}".encode()
    ex = redact(
        exchange(
            url=f"https://www.kimi.com/x?access_token={ACCESS}&q=1",
            request_headers=(
                ("authorization", f"Bearer {REFRESH}"),
                ("cookie", f"a=1; kimi-auth={ACCESS}"),
                ("x-refresh-token", NEW_REFRESH),
            ),
            request_body=echo,
            error=f"failed with {ACCESS}",
        )
    )
    state = repr(ex).encode() + repr(exchange_flow(ex).get_state()).encode()
    for secret in (ACCESS, REFRESH, NEW_REFRESH):
        assert secret.encode() not in state
    assert dict(ex.request_headers)["authorization"] == REDACTED
    assert json.loads(ex.response_body) == {
        "access_token": REDACTED,
        "refresh_token": REDACTED,
        "expires_in": 900,
    }
    assert "q=1" in ex.url
    assert dict(redact(exchange()).request_headers)["x-msh-platform"] == "web"


def test_bodies_without_secrets_are_kept_byte_for_byte():
    stream = b"\x00\x00\x00\x00\x02{}" + b'data: {"event":"cmpl","text":"token"}\n\n'
    for body in (stream, b'{"a": 1,  "tokens": 3}', b"{not json", b"[1, 2]"):
        assert redact(exchange(response_body=body)).response_body == body


def test_the_flow_carries_both_sides_and_the_raw_body():
    flow = exchange_flow(redact(exchange(method="POST", request_body=b'{"chat_id":"c"}')))
    assert flow.request.url == "https://www.kimi.com/api/auth/token/refresh"
    assert flow.request.content == b'{"chat_id":"c"}'
    assert flow.response is not None
    assert flow.response.status_code == 200
    # httpx decoded this body: its content-encoding no longer applies
    assert "content-encoding" not in flow.response.headers
    assert flow.response.headers["content-length"] == str(len(flow.response.raw_content or b""))
    assert flow.metadata["kimi_free_api"] == "upstream"
    failed = exchange_flow(redact(exchange(status=None, error="peer closed")))
    assert failed.response is None
    assert failed.error is not None
    assert failed.error.msg == "peer closed"


async def test_flows_go_to_the_flow_list_and_the_record_file(tmp_path):
    view = View()
    with taddons.context(view):
        addons = {"view": view}
        idle = UpstreamFlows(lambda name: None)
        assert not idle.active
        shown = UpstreamFlows(addons.get, record_path=str(tmp_path / "k.flows"))
        assert shown.active
        assert shown.watched
        shown.record(exchange())
        shown.close()
        assert len(view) == 1
        [flow] = list(view)
        # what mitmweb sends to the browser for the flow list
        assert flow_to_json(flow)["response"]["status_code"] == 200
        assert (tmp_path / "k.flows").stat().st_size > 0
        hidden = UpstreamFlows(addons.get, show=False)
        assert not hidden.active


def test_a_streamed_relay_answer_is_kept_for_display():
    flow = tflow.tflow(resp=tutils.tresp(content=None))
    assert isinstance(flow.response, http.Response)
    flow.response.raw_content = None
    stream = keep_streamed_body(flow)
    assert [stream(b"data: 1\n\n"), stream(b"data: [DONE]\n\n")] == [
        b"data: 1\n\n",
        b"data: [DONE]\n\n",
    ]
    assert flow.response.raw_content is None
    assert stream(b"") == b""
    assert flow.response.raw_content == b"data: 1\n\ndata: [DONE]\n\n"
