"""SSRF-safe download of a URL a client named in its request (an image or file part).

Theory of operation: a client-named URL is hostile input. Each hop (the first request and every
redirect) goes through the same steps:

1. parse it: only http/https, no credentials in the URL;
2. resolve the host ONCE and refuse it when ANY address is non-public (`refusal_reason`), unless
   the policy allows private addresses;
3. connect to the checked IP itself — the URL is rewritten to the IP, the `Host` header keeps the
   name, and for https the TLS server name (`sni_hostname` request extension of httpcore) keeps the
   name too, so the certificate is still verified against the hostname. No second DNS lookup
   happens, so a rebinding DNS server cannot swap the address after the check;
4. redirects are followed by hand (at most `max_redirects`), each target re-checked from step 1.

The request is built with `httpx.Request` directly, not `client.build_request`, so the client's
default headers and cookies never travel with it; it carries only a neutral User-Agent, Accept and
`Accept-Encoding: identity`. The body is read in chunks and counted, so memory stays bounded by
`max_bytes` whatever the server claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import hashlib
import ipaddress
import mimetypes
import socket
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx

from translator import TranslatorError

__all__ = [
    "FetchError",
    "FetchPolicy",
    "FetchStream",
    "Fetched",
    "Fetcher",
    "Resolver",
    "make_fetch_client",
    "refusal_reason",
    "system_resolver",
]

#: (host, port) -> the host's addresses as text; raises OSError when the name does not resolve
Resolver = Callable[[str, int], Awaitable[list[str]]]

USER_AGENT = "kimi-free-api/0.1 (file fetch)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated RFC 4291 ::a.b.c.d


class FetchError(TranslatorError):
    """A client-named URL could not be fetched; an OpenAI-style 400 error.

    `param` names the request part (e.g. "messages[2].content[1].image_url.url"); `code` is one of
    "url_refused" (bad scheme, credentials, non-public address), "file_too_large",
    "fetch_failed" (DNS, connection, HTTP status, redirects) or "fetch_timeout".
    """

    default_status = 400
    default_type = "invalid_request_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchPolicy:
    """Limits for one fetch. `total_timeout` bounds everything: DNS, redirects and the body."""

    allow_private: bool = False
    max_bytes: int = 100 * 1024 * 1024
    connect_timeout: float = 10
    read_timeout: float = 30
    total_timeout: float = 120
    max_redirects: int = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetched:
    """A whole downloaded body."""

    data: bytes
    #: the media type without parameters, lower-case; None when the server sent none
    content_type: str | None
    #: the URL after redirects (with the hostname, not the IP it was fetched from)
    final_url: str
    filename: str


def refusal_reason(address: str) -> str | None:
    """Why `address` (an IP literal) must not be fetched from, or None when it is public.

    Embedded IPv4 addresses (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64) are judged by the
    IPv4 address they carry, since that is where the packets end up.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 scope id
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = None
        if ip.ipv4_mapped is not None:
            embedded = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            embedded = ip.sixtofour
        elif ip.teredo is not None:
            embedded = ip.teredo[1]  # (server, client): the client is the tunnelled host
        elif ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            # The packets go to the embedded address, so it alone decides (this also lets a
            # mapped public address such as ::ffff:8.8.8.8 through).
            inner = refusal_reason(str(embedded))
            return None if inner is None else f"embeds {embedded} ({inner})"
        if ip.is_site_local:
            return "site-local"
    # Order matters only for the message: the most specific reason first.
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip in _SHARED_ADDRESS_SPACE, "shared address space"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "not globally routable"),
    )
    for hit, why in checks:
        if hit:
            return why
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The event loop's getaddrinfo, as a list of distinct address strings (in its order)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


def make_fetch_client(policy: FetchPolicy, **kwargs: Any) -> httpx.AsyncClient:
    """A client fit for `Fetcher`: no redirects, no environment proxies, no default auth.

    A dedicated client is recommended: httpx stores cookies a fetched server sets in the client's
    jar, and environment proxies would defeat the address check.
    """
    timeout = httpx.Timeout(
        policy.read_timeout, connect=policy.connect_timeout, pool=policy.connect_timeout
    )
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout, **kwargs)


class FetchStream:
    """An open response: headers are known, the body is read with `aiter_bytes` or `read`.

    Reading enforces `max_bytes` (counting decoded bytes) and the overall deadline.
    """

    def __init__(
        self,
        response: httpx.Response,
        *,
        final_url: str,
        filename: str | None,
        param: str,
        policy: FetchPolicy,
        deadline: float,
    ) -> None:
        self._response = response
        self._param = param
        self._policy = policy
        self._deadline = deadline
        self.final_url = final_url
        #: from Content-Disposition or the URL path; None when neither names the file
        self.filename = filename
        self.content_type = _media_type(response.headers.get("content-type"))
        self.content_length = _content_length(response)
        self.received = 0

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body in chunks; raises FetchError past `max_bytes` or the deadline."""
        chunks = self._response.aiter_bytes()
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise _timeout(self._param, "reading the body") from exc
            except httpx.HTTPError as exc:
                raise _failed(self._param, f"the body could not be read ({exc!r})") from exc
            self.received += len(chunk)
            if self.received > self._policy.max_bytes:
                raise _too_large(self._param, self._policy.max_bytes)
            yield chunk

    async def read(self) -> bytes:
        """The whole body (bounded by `max_bytes`)."""
        return b"".join([chunk async for chunk in self.aiter_bytes()])


class Fetcher:
    """Downloads client-named URLs under a `FetchPolicy`.

    `client` should come from `make_fetch_client` (see there); `resolver` is injectable for tests
    and defaults to the loop's getaddrinfo.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        policy: FetchPolicy,
        resolver: Resolver | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.resolver: Resolver = resolver or system_resolver

    async def fetch(self, url: str, *, param: str) -> Fetched:
        """Download `url` whole.

        Raises:
            FetchError: refused URL or address, HTTP status >= 400, too large, too slow, ...
        """
        async with self.open(url, param=param) as stream:
            data = await stream.read()
        filename = stream.filename or _hash_name(data, stream.content_type)
        return Fetched(
            data=data,
            content_type=stream.content_type,
            final_url=stream.final_url,
            filename=filename,
        )

    @contextlib.asynccontextmanager
    async def open(self, url: str, *, param: str) -> AsyncIterator[FetchStream]:
        """Open `url` (following redirects) and yield the response for streaming reads.

        A Content-Length above `max_bytes` is refused before any byte of the body is read.

        Raises:
            FetchError: as `fetch`.
        """
        deadline = asyncio.get_running_loop().time() + self.policy.total_timeout
        final, response = await self._follow(url, param, deadline)
        try:
            yield FetchStream(
                response,
                final_url=str(final),
                filename=_filename(response, final),
                param=param,
                policy=self.policy,
                deadline=deadline,
            )
        finally:
            await response.aclose()

    async def _follow(
        self, url: str, param: str, deadline: float
    ) -> tuple[httpx.URL, httpx.Response]:
        current = _parse(url, param)
        redirects = 0
        while True:
            response = await self._send_once(current, param, deadline)
            status = response.status_code
            if status in _REDIRECTS:
                location = response.headers.get("location")
                await response.aclose()
                if not location:
                    raise _failed(param, f"HTTP {status} redirect without a Location")
                if redirects >= self.policy.max_redirects:
                    raise _failed(
                        param, f"too many redirects (more than {self.policy.max_redirects})"
                    )
                redirects += 1
                try:
                    target = str(current.join(location))
                except httpx.InvalidURL as exc:
                    raise _refused(
                        param, f"the redirect target is not a valid URL ({exc})"
                    ) from exc
                current = _parse(target, param)
                continue
            if status >= 300:
                await response.aclose()
                raise _failed(param, f"the server answered HTTP {status}")
            length = _content_length(response)
            if length is not None and length > self.policy.max_bytes:
                await response.aclose()
                raise _too_large(param, self.policy.max_bytes)
            return current, response

    async def _send_once(self, url: httpx.URL, param: str, deadline: float) -> httpx.Response:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            async with asyncio.timeout_at(deadline):
                address = await self._checked_address(host, port, param)
                # The netloc keeps the hostname (IDNA) and a non-default port, never userinfo.
                headers = {
                    "host": url.netloc.decode("ascii"),
                    "user-agent": USER_AGENT,
                    "accept": "*/*",
                    # Ask for plain bytes; if a server compresses anyway, httpx decodes and the
                    # cap counts the decoded bytes, so a small bomb cannot grow past it.
                    "accept-encoding": "identity",
                }
                timeout = httpx.Timeout(
                    self.policy.read_timeout,
                    connect=self.policy.connect_timeout,
                    pool=self.policy.connect_timeout,
                )
                extensions: dict[str, Any] = {"timeout": timeout.as_dict()}
                if url.scheme == "https" and not _is_ip(host):
                    # Connect to the IP, but verify the certificate against the hostname.
                    extensions["sni_hostname"] = host
                request = httpx.Request(
                    "GET", url.copy_with(host=address), headers=headers, extensions=extensions
                )
                return await self.client.send(
                    request, stream=True, follow_redirects=False, auth=None
                )
        except FetchError:
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise _timeout(param, f"connecting to {host}") from exc
        except httpx.HTTPError as exc:
            raise _failed(param, f"cannot connect to {host} ({type(exc).__name__})") from exc

    async def _checked_address(self, host: str, port: int, param: str) -> str:
        if _is_ip(host):
            addresses = [host]
        else:
            try:
                addresses = await self.resolver(host, port)
            except OSError as exc:
                raise _failed(param, f"cannot resolve host {host!r} ({exc})") from exc
            if not addresses:
                raise _failed(param, f"cannot resolve host {host!r}")
        if not self.policy.allow_private:
            # Any bad address refuses the host: a name mixing public and private addresses is
            # either misconfigured or an attack, and connecting to "the public one" would depend
            # on which address a retry picks.
            for address in addresses:
                why = refusal_reason(address)
                if why is not None:
                    raise _refused(param, f"{host!r} resolves to a refused address ({why})")
        return addresses[0].split("%", 1)[0]


def _parse(url: str, param: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise _refused(param, f"not a valid URL ({exc})") from exc
    if parsed.scheme not in ("http", "https"):
        raise _refused(param, f"only http and https URLs can be fetched, not {parsed.scheme!r}")
    if not parsed.raw_host:
        raise _refused(param, "the URL has no host")
    if parsed.userinfo:
        raise _refused(param, "URLs with credentials are not fetched")
    return parsed


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _media_type(value: str | None) -> str | None:
    if not value:
        return None
    media = value.split(";", 1)[0].strip().lower()
    return media or None


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _filename(response: httpx.Response, url: httpx.URL) -> str | None:
    disposition = response.headers.get("content-disposition")
    if disposition:
        message = email.message.Message()
        message["content-disposition"] = disposition
        # get_filename understands both filename="..." and RFC 2231/5987 filename*=UTF-8''...
        name = _clean_name(message.get_filename())
        if name:
            return name
    return _clean_name(unquote(url.path.rsplit("/", 1)[-1]))


def _clean_name(name: str | None) -> str | None:
    """A bare file name: no directories, no control characters, at most 200 characters."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        return None
    return name[-200:]


def _hash_name(data: bytes, content_type: str | None) -> str:
    extension = mimetypes.guess_extension(content_type) if content_type else None
    return f"file-{hashlib.sha256(data).hexdigest()[:16]}{extension or ''}"


def _refused(param: str, why: str) -> FetchError:
    return FetchError(f"{param}: URL refused: {why}", param=param, code="url_refused")


def _failed(param: str, why: str) -> FetchError:
    return FetchError(
        f"{param}: the URL could not be fetched: {why}", param=param, code="fetch_failed"
    )


def _timeout(param: str, what: str) -> FetchError:
    return FetchError(
        f"{param}: the URL could not be fetched: timed out {what}",
        param=param,
        code="fetch_timeout",
    )


def _too_large(param: str, limit: int) -> FetchError:
    return FetchError(
        f"{param}: the file is larger than the limit of {limit} bytes",
        param=param,
        code="file_too_large",
    )
