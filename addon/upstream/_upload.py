"""Kimi's upload flow for the files and images of a chat request, in both dialects.

For each `FileSource` (an inline `data:` file or a URL the `Fetcher` downloads):

1. the real media type is sniffed from the bytes (`effective_mime`), which decides image vs file;
2. `POST /api/pre-sign-url` → `{url, object_name, file_id}`;
3. `PUT` the bytes to the pre-signed storage URL, with the media type and NO Kimi headers (it is a
   storage URL, not Kimi's API: the access token must not travel there);
4. `POST /api/file` registers the object; the answer is the file detail. It is repeated every
   `poll_interval` until its `status` is "initialized" or "parsed"; an answer without `status`
   (the connect dialect answers `{"id"}` at once) counts as ready;
5. legacy files only (not images; the connect flow has no such step that we know of):
   `POST /api/file/parse_process {"ids": [id]}`. Its answer is a stream of status lines whose exact
   shape is unknown, so it is read whole and scanned tolerantly: every JSON object in it (bare,
   or after `data:`) is searched for `status` strings; "parsed" ends the wait, a failure status is
   a 502, neither (or an answer that broke off) means "ask again after poll_interval". Steps 4
   and 5 share one `parse_timeout`
   budget each; running out is a 504.

Uploads of one request run concurrently (at most `concurrency` at a time) and come back in request
order. The same bytes uploaded again by the same account (and dialect) within `reuse_ttl` reuse the
earlier upload, and concurrent uploads of the same bytes share one upload. A legacy *file* is
registered into a conversation (`chat_id`), so its reuse is also keyed by the conversation; images
and connect uploads are not bound to one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from translator import InlineFile, KimiCall, TranslatorError
from translator._dataurl import effective_mime, extension_for_mime, kind_for_mime
from translator._plan import FileSource
from translator.legacy._calls import UploadedFile as _RefFile
from translator.legacy._calls import parse_process_call, presign_call, register_file_call
from translator.legacy._errors import kimi_error

from ._fetch import Fetcher

__all__ = ["Execute", "UploadError", "UploadedFile", "Uploader"]

#: performs one KimiCall for the account being served (session headers added) and returns the
#: response with its body read
Execute = Callable[[KimiCall], Awaitable[httpx.Response]]
DialectName = Literal["legacy", "connect"]

_READY = frozenset({"initialized", "parsed"})
_FAILED = frozenset({"failed", "error", "parse_failed", "upload_failed"})


class UploadError(TranslatorError):
    """An upload failed; an OpenAI-style error naming the request part (`param`).

    status 400: the client's input cannot be uploaded (empty, too large, bad conversation id);
    502: Kimi or its storage refused or failed (auth/quota statuses of Kimi's own error mapping,
    e.g. 401 or 429, are kept so the caller can fail over); 504: Kimi did not finish in time.
    The type is "invalid_request_error" for 400, else "upstream_error" unless given.
    """

    default_status = 502
    default_type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        param: str | None,
        code: str,
        type: str | None = None,  # the OpenAI field name
    ) -> None:
        if type is None and status == 400:
            type = "invalid_request_error"
        super().__init__(message, status=status, type=type, param=param, code=code)


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadedFile(_RefFile):
    """A file Kimi accepted. A subclass of the translator's `UploadedFile` (what the completion
    calls take), adding the media type it was uploaded as."""

    mime_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Blob:
    data: bytes
    name: str
    mime_type: str
    kind: Literal["image", "file"]
    sha256: str
    param: str


@dataclass(slots=True)
class _Entry:
    task: asyncio.Task[UploadedFile]
    #: clock() after which the finished upload is no longer reused; None while in flight
    expires: float | None = None
    #: callers awaiting the upload now
    waiters: int = 0


class Uploader:
    """Uploads a request's files for one account at a time; see the module docstring.

    `client` does the storage PUT (no auth headers); `execute` performs Kimi calls and is the
    default for `upload_all(execute=...)`.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        execute: Execute,
        fetcher: Fetcher,
        parse_timeout: float = 30,
        poll_interval: float = 0.5,
        concurrency: int = 3,
        reuse_ttl: float = 3600,
        clock: Callable[[], float] = time.monotonic,
        dialect: DialectName = "legacy",
    ) -> None:
        self.client = client
        self.execute = execute
        self.fetcher = fetcher
        self.parse_timeout = parse_timeout
        self.poll_interval = poll_interval
        self.concurrency = max(1, concurrency)
        self.reuse_ttl = reuse_ttl
        self.clock = clock
        self.dialect: DialectName = dialect
        self._entries: dict[tuple[Hashable, ...], _Entry] = {}

    async def upload_all(
        self,
        account_key: str,
        files: Sequence[FileSource],
        *,
        conversation_id: str | None,
        execute: Execute | None = None,
        dialect: DialectName | None = None,
    ) -> list[UploadedFile]:
        """Upload `files` (in parallel, bounded) and return them in the same order.

        `execute` and `dialect` override the constructor's for this call (an execute bound to the
        account `account_key` names, a per-account dialect).

        Raises:
            FetchError: a URL could not be fetched (400).
            UploadError: the input cannot be uploaded (400), Kimi failed (502...), or took too
                long (504).
        """
        run = execute or self.execute
        which = dialect or self.dialect
        self._prune()
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(source: FileSource) -> UploadedFile:
            async with semaphore:
                blob = await self._materialise(source)
                scope = conversation_id if which == "legacy" and blob.kind == "file" else None
                key = (account_key, which, blob.sha256, scope)
                return await self._shared(key, blob, run, which, conversation_id)

        tasks = [asyncio.create_task(one(source)) for source in files]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            # The first failure decides the answer; the other uploads are of no use any more.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # --- sources -------------------------------------------------------------------------------

    async def _materialise(self, source: FileSource) -> _Blob:
        limit = self.fetcher.policy.max_bytes
        declared: str | None
        if isinstance(source, InlineFile):
            data, declared, name = source.data, source.mime_type, source.name
        else:
            fetched = await self.fetcher.fetch(source.url, param=source.param)
            data, declared, name = fetched.data, fetched.content_type, fetched.filename
        if not data:
            raise UploadError(
                f"{source.param}: the file is empty",
                status=400,
                param=source.param,
                code="empty_file",
            )
        if len(data) > limit:
            raise UploadError(
                f"{source.param}: the file is larger than the limit of {limit} bytes",
                status=400,
                param=source.param,
                code="file_too_large",
            )
        mime = effective_mime(data, declared)
        if "." not in name.strip(".") and mime != "application/octet-stream":
            # Kimi's parser goes by the extension; give a bare name one that matches the bytes.
            name = f"{name}.{extension_for_mime(mime)}"
        return _Blob(
            data=data,
            name=name,
            mime_type=mime,
            kind=kind_for_mime(mime),
            sha256=hashlib.sha256(data).hexdigest(),
            param=source.param,
        )

    # --- reuse ---------------------------------------------------------------------------------

    def _prune(self) -> None:
        now = self.clock()
        for key in [
            k for k, e in self._entries.items() if e.expires is not None and e.expires <= now
        ]:
            del self._entries[key]

    async def _shared(
        self,
        key: tuple[Hashable, ...],
        blob: _Blob,
        execute: Execute,
        dialect: DialectName,
        conversation_id: str | None,
    ) -> UploadedFile:
        entry = self._entries.get(key)
        if entry is not None and entry.expires is not None and entry.expires <= self.clock():
            del self._entries[key]
            entry = None
        if entry is None:
            task = asyncio.create_task(self._upload(blob, execute, dialect, conversation_id))
            entry = _Entry(task=task)
            self._entries[key] = entry
            task.add_done_callback(lambda t: self._settle(key, t))
        # shield: a caller that goes away (client hung up, a sibling file failed) must not cancel
        # an upload other requests still wait for; the last one to leave cancels it.
        entry.waiters += 1
        try:
            return await asyncio.shield(entry.task)
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.task.done():
                entry.task.cancel()

    def _settle(self, key: tuple[Hashable, ...], task: asyncio.Task[UploadedFile]) -> None:
        entry = self._entries.get(key)
        failed = task.cancelled() or task.exception() is not None  # also marks it retrieved
        if entry is None or entry.task is not task:
            return
        if failed:
            del self._entries[key]
        else:
            entry.expires = self.clock() + self.reuse_ttl

    # --- the steps -----------------------------------------------------------------------------

    async def _upload(
        self,
        blob: _Blob,
        execute: Execute,
        dialect: DialectName,
        conversation_id: str | None,
    ) -> UploadedFile:
        size = len(blob.data)
        signed = await self._call(
            execute, lambda: presign_call(blob.kind, blob.name, size), blob, "pre-sign"
        )
        url, object_name, file_id = (_text(signed, k) for k in ("url", "object_name", "file_id"))
        if not url:
            raise _kimi_failed(blob, "the pre-sign answer has no url")
        await self._put(url, blob)

        def register() -> KimiCall:
            if dialect == "connect":
                body = {
                    "type": blob.kind,
                    "name": blob.name,
                    "size": size,
                    "file_id": file_id,
                    "object_name": object_name,
                }
                return KimiCall(method="POST", path="/api/file", json=body)
            return register_file_call(
                blob.kind, blob.name, object_name, file_id, conversation_id or ""
            )

        detail = await self._until_ready(execute, register, blob)
        uploaded_id = _text(detail, "id") or file_id
        if not uploaded_id:
            raise _kimi_failed(blob, "Kimi returned no file id")
        if dialect == "legacy" and blob.kind == "file" and detail.get("status") != "parsed":
            await self._until_parsed(execute, uploaded_id, blob)
        return UploadedFile(
            id=uploaded_id,
            name=_text(detail, "name") or blob.name,
            size=size,
            kind=blob.kind,
            mime_type=blob.mime_type,
            detail=detail,
        )

    async def _put(self, url: str, blob: _Blob) -> None:
        # httpx.Request, not client.build_request: no client default headers or cookies.
        request = httpx.Request(
            "PUT", url, content=blob.data, headers={"content-type": blob.mime_type}
        )
        try:
            response = await self.client.send(request, auth=None, follow_redirects=False)
        except httpx.TimeoutException as exc:
            raise _kimi_failed(blob, "the storage upload timed out", status=504) from exc
        except httpx.HTTPError as exc:
            raise _kimi_failed(blob, f"the storage upload failed ({type(exc).__name__})") from exc
        if response.status_code >= 300:
            raise _kimi_failed(blob, f"the storage answered HTTP {response.status_code}")

    async def _until_ready(
        self, execute: Execute, make: Callable[[], KimiCall], blob: _Blob
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.parse_timeout):
                while True:
                    detail = await self._call(execute, make, blob, "file registration")
                    status = detail.get("status")
                    if status is None or status in _READY:
                        return detail
                    if status in _FAILED:
                        raise _kimi_failed(blob, f"Kimi could not take the file ({status})")
                    await asyncio.sleep(self.poll_interval)
        except TimeoutError as exc:
            raise _timed_out(blob, "registered") from exc

    async def _until_parsed(self, execute: Execute, file_id: str, blob: _Blob) -> None:
        try:
            async with asyncio.timeout(self.parse_timeout):
                while True:
                    try:
                        body = await self._send(
                            execute, parse_process_call([file_id]), blob, "parse"
                        )
                    except UploadError as exc:
                        # The status stream broke off (Kimi closes it while parsing goes on):
                        # ask again, until the parse timeout, as for a "still parsing" answer.
                        if exc.code != "upstream_unreachable":
                            raise
                        body = b""
                    statuses = _statuses(body)
                    if statuses & _FAILED:
                        raise _kimi_failed(blob, "Kimi could not parse the file")
                    if "parsed" in statuses:
                        return
                    await asyncio.sleep(self.poll_interval)
        except TimeoutError as exc:
            raise _timed_out(blob, "parsed") from exc

    async def _call(
        self, execute: Execute, make: Callable[[], KimiCall], blob: _Blob, what: str
    ) -> dict[str, Any]:
        try:
            call = make()
        except TranslatorError as err:  # e.g. a conversation id unfit for Kimi
            raise UploadError(
                f"{blob.param}: {err.message}",
                status=err.status,
                param=blob.param,
                code=err.code or "upload_failed",
            ) from err
        body = await self._send(execute, call, blob, what)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise _kimi_failed(blob, f"Kimi's {what} answer is not a JSON object")
        if answer.get("error_type"):  # Kimi errors sometimes come with HTTP 200
            raise _from_kimi(blob, what, kimi_error(200, answer))
        return answer

    async def _send(self, execute: Execute, call: KimiCall, blob: _Blob, what: str) -> bytes:
        try:
            response = await execute(call)
            body = await response.aread()
        except TranslatorError as err:
            raise _from_kimi(blob, what, err) from err
        except httpx.TimeoutException as exc:
            raise _kimi_failed(blob, f"Kimi's {what} call timed out", status=504) from exc
        except httpx.HTTPError as exc:
            raise _kimi_failed(blob, f"Kimi's {what} call failed ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            raise _from_kimi(blob, what, kimi_error(response.status_code, body))
        return body


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _statuses(body: bytes) -> set[str]:
    """Every `status` string in the JSON objects of a body that is one JSON document, or lines of
    JSON / SSE `data:` lines (the parse_process stream's shape is not known for sure)."""
    text = body.decode("utf-8", "replace")
    documents: list[Any] = []
    try:
        documents.append(json.loads(text))
    except ValueError:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("data:"):
                line = line[5:].strip()
            if line[:1] in ("{", "["):
                try:
                    documents.append(json.loads(line))
                except ValueError:
                    continue
    found: set[str] = set()
    while documents:
        doc = documents.pop()
        if isinstance(doc, dict):
            status = doc.get("status")
            if isinstance(status, str):
                found.add(status.lower())
            documents.extend(doc.values())
        elif isinstance(doc, list):
            documents.extend(doc)
    return found


def _kimi_failed(blob: _Blob, why: str, *, status: int = 502) -> UploadError:
    code = "upload_timeout" if status == 504 else "upload_failed"
    return UploadError(
        f"{blob.param}: upload to Kimi failed: {why}", status=status, param=blob.param, code=code
    )


def _from_kimi(blob: _Blob, what: str, err: TranslatorError) -> UploadError:
    # Keep Kimi's mapped status (401 token, 429 quota, ...) so the caller can refresh or fail over.
    # A 400 from Kimi's mapping would blame the client for Kimi's refusal: that is a 502 here.
    keep = err.status != 400
    return UploadError(
        f"{blob.param}: upload to Kimi failed ({what}): {err.message}",
        status=err.status if keep else 502,
        param=blob.param,
        code=(err.code if keep else None) or "upload_failed",
        type=err.type if keep else None,
    )


def _timed_out(blob: _Blob, state: str) -> UploadError:
    return UploadError(
        f"{blob.param}: Kimi did not report the file {state} in time",
        status=504,
        param=blob.param,
        code="upload_timeout",
    )
