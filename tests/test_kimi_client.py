"""`KimiClient` with its transport given: each call goes straight to the transport instead of
through `httpx.AsyncClient.send`, and must still carry what `send` would have added (the
client's default headers, timeouts and cookies) and keep the cookies Kimi sets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from addon.upstream._kimi import KimiClient, SessionIdentity
from translator import KimiCall

BASE = "https://kimi.test"
IDENTITY = SessionIdentity(device_id="7" * 19, session_id="8" * 19)
CALL = KimiCall(method="POST", path="/api/chat", json={"name": "新会话", "n": 1})


class Pieces(httpx.AsyncByteStream):
    """A body that arrives in pieces, as a network stream does."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece

    async def aclose(self) -> None:
        self.closed = True


class Recorder:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[Pieces] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(Pieces(b'{"id": ', b'"chat-1"}'))
        return httpx.Response(
            200,
            headers={"set-cookie": "seen=yes; Path=/", "content-type": "application/json"},
            stream=self.bodies[-1],
        )


def make_client(recorder: Recorder) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.MockTransport(recorder),
        headers={"x-client-default": "kept"},
        cookies={"jar": "1"},
        timeout=httpx.Timeout(5.0, read=7.0),
    )


async def refuse_send(*args: object, **kwargs: object) -> httpx.Response:
    raise AssertionError("the call went through AsyncClient.send")


async def test_a_unary_call_skips_send_and_carries_what_send_would_add() -> None:
    direct, through_send = Recorder(), Recorder()
    async with make_client(direct) as client, make_client(through_send) as reference:
        kimi = KimiClient(client, BASE, transport=client._transport, identity=IDENTITY)
        client.send = refuse_send  # type: ignore[method-assign]
        response = await kimi.send(CALL, token="tok-unit")
        expected = await KimiClient(reference, BASE, identity=IDENTITY).send(
            CALL, token="tok-unit"
        )

        assert response.json() == expected.json() == {"id": "chat-1"}
        assert response.is_closed
        assert direct.bodies[0].closed
        (sent,) = direct.requests
        (wanted,) = through_send.requests
        assert sent.method == wanted.method
        assert sent.url == wanted.url
        assert sent.content == wanted.content
        assert json.loads(sent.content) == {"name": "新会话", "n": 1}
        assert dict(sent.headers) == dict(wanted.headers)
        assert sent.headers["x-client-default"] == "kept"
        assert sent.headers["cookie"] == "jar=1"
        assert sent.headers["authorization"] == "Bearer tok-unit"
        assert sent.extensions["timeout"] == wanted.extensions["timeout"]
        assert sent.extensions["timeout"]["read"] == 7.0
        # a cookie Kimi sets is kept for the next call, as `send` keeps it
        assert client.cookies.get("seen") == "yes" == reference.cookies.get("seen")
        await kimi.send(CALL, token="tok-unit")
        assert "seen=yes" in direct.requests[-1].headers["cookie"]


async def test_a_streamed_call_skips_send_and_is_read_by_the_caller() -> None:
    direct = Recorder()
    async with make_client(direct) as client:
        kimi = KimiClient(client, BASE, transport=client._transport, identity=IDENTITY)
        client.send = refuse_send  # type: ignore[method-assign]
        async with kimi.stream(CALL, token="tok-unit") as response:
            assert not direct.bodies[0].closed  # the caller reads it
            body = b"".join([part async for part in response.aiter_raw()])
        assert json.loads(body) == {"id": "chat-1"}
        assert response.is_closed
        assert direct.bodies[0].closed
        (sent,) = direct.requests
        assert sent.headers["accept-encoding"] == "identity"
        assert sent.headers["x-client-default"] == "kept"


async def test_without_a_transport_every_call_goes_through_send() -> None:
    recorder = Recorder()
    async with make_client(recorder) as client:
        kimi = KimiClient(client, BASE, identity=IDENTITY)
        client.send = refuse_send  # type: ignore[method-assign]
        with pytest.raises(AssertionError, match=r"AsyncClient\.send"):
            await kimi.send(CALL, token="tok-unit")
        assert recorder.requests == []
