"""`data:` URLs (RFC 2397) and what the bytes really are.

Clients send inline images and files as `data:<mime>;base64,<data>` URLs. We decode them here and
decide image vs file from the bytes' magic numbers, never from the client's name or declared type
alone: Kimi's image path only takes real images, and a mislabelled upload fails there late.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ._errors import LocalProtocolError

__all__ = [
    "DataURL",
    "effective_mime",
    "extension_for_mime",
    "inline_name",
    "kind_for_mime",
    "parse_data_url",
    "sniff_mime",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class DataURL:
    """A decoded `data:` URL: the declared media type (lower-case `type/subtype`, parameters
    dropped; RFC 2397's default `text/plain` when absent) and the bytes."""

    mime_type: str
    data: bytes


# RFC 2045 token characters for type and subtype.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MIME = re.compile(rf"({_TOKEN})/({_TOKEN})")


def parse_data_url(text: str, *, param: str | None = None) -> DataURL:
    """Decode `text`, a `data:[<mediatype>][;base64],<data>` URL (RFC 2397).

    The data part is percent-decoded; with `;base64` it is then base64-decoded, ignoring ASCII
    whitespace and tolerating missing `=` padding (as browsers do).

    Raises:
        LocalProtocolError: not a data URL, a malformed media type, or bad base64 (code
            "invalid_value", `param` as given).
    """

    def bad(why: str) -> LocalProtocolError:
        return LocalProtocolError(f"invalid data URL: {why}", param=param, code="invalid_value")

    if text[:5].lower() != "data:":
        raise bad("it must start with 'data:'")
    header, comma, body = text[5:].partition(",")
    if not comma:
        raise bad("there is no ',' between the media type and the data")
    params = [p.strip() for p in header.split(";")]
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    if is_base64:
        params.pop()
    media_type = params[0].lower()
    if not media_type:
        media_type = "text/plain"
    elif _MIME.fullmatch(media_type) is None:
        raise bad(f"{params[0]!r} is not a media type")
    data = urllib.parse.unquote_to_bytes(body)
    if is_base64:
        data = _forgiving_base64(data, bad)
    return DataURL(mime_type=media_type, data=data)


def _forgiving_base64(raw: bytes, bad: Callable[[str], LocalProtocolError]) -> bytes:
    # WHATWG "forgiving-base64 decode": whitespace ignored, padding optional but never wrong.
    compact = re.sub(rb"[\t\n\f\r ]", b"", raw)
    if len(compact) % 4 == 0 and compact.endswith(b"="):
        compact = compact.rstrip(b"=")
    if len(compact) % 4 == 1:
        raise bad("the base64 data has a wrong length")
    try:
        return base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except binascii.Error:
        raise bad("the data is not valid base64 (bad character or misplaced padding)") from None


# --- sniffing ------------------------------------------------------------------------------------

_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
#: how far into a ZIP we look for the Office part names (they come first in Office files)
_ZIP_WINDOW: Final = 64 * 1024
_TEXT_WINDOW: Final = 8 * 1024

_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)

_ZIP_MEMBERS: Final[tuple[tuple[bytes, str], ...]] = (
    (b"word/", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (b"xl/", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    (b"ppt/", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
)

# OLE stream names are UTF-16LE in the directory, which can sit anywhere in the file.
_OLE_STREAMS: Final[tuple[tuple[bytes, str], ...]] = (
    ("WordDocument".encode("utf-16-le"), "application/msword"),
    ("Workbook".encode("utf-16-le"), "application/vnd.ms-excel"),
    ("PowerPoint Document".encode("utf-16-le"), "application/vnd.ms-powerpoint"),
)

#: control characters that ordinary text contains (tab, LF, FF, CR, ESC, backspace)
_TEXT_CONTROLS: Final = frozenset("\t\n\x0c\r\x1b\b")

#: types a sniff only narrows to a family; a more precise declared type of that family is kept
_GENERIC: Final = frozenset({"text/plain", "application/zip", "application/x-ole-storage"})


def sniff_mime(data: bytes) -> str | None:
    """The media type the bytes' magic numbers show, or None when unrecognised (or empty).

    Knows PNG, JPEG, GIF, WebP, BMP, PDF, ZIP with Office Open XML (docx/xlsx/pptx by the part
    names near the start) or plain ZIP, OLE compound files (doc/xls/ppt by stream name, else
    `application/x-ole-storage`), and UTF-8 text without unusual control characters.
    """
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    # "BM", then a 4-byte size, 4 reserved zero bytes: "BM" alone is too common in text.
    if data[:2] == b"BM" and len(data) >= 26 and data[6:10] == b"\0\0\0\0":
        return "image/bmp"
    if data.startswith(b"PK\x03\x04"):
        head = data[:_ZIP_WINDOW]
        for member, mime in _ZIP_MEMBERS:
            if member in head:
                return mime
        return "application/zip"
    if data.startswith(_OLE_MAGIC):
        for stream, mime in _OLE_STREAMS:
            if stream in data:
                return mime
        return "application/x-ole-storage"
    return "text/plain" if _looks_like_text(data) else None


def _looks_like_text(data: bytes) -> bool:
    if not data:
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        # final=False: the window may cut a multi-byte character, which is not an error.
        text = decoder.decode(data[:_TEXT_WINDOW], final=len(data) <= _TEXT_WINDOW)
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in _TEXT_CONTROLS or ch == "\ufeff" for ch in text)


_IMAGE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"})


def kind_for_mime(mime: str) -> Literal["image", "file"]:
    """ "image" for the raster types Kimi's image upload takes, "file" for everything else
    (SVG included: it is a document to Kimi, not a picture)."""
    return "image" if mime in _IMAGE_TYPES else "file"


def effective_mime(data: bytes, declared: str | None) -> str:
    """The media type to upload `data` as: what the bytes show, refined by the declared type.

    A declared type is kept only where the sniff cannot contradict it: when the sniff finds a
    family (`text/plain`, ZIP, OLE) and the declared type is a non-image, or when the sniff finds
    nothing and the declared type is not an image (a claimed image that is not one is a file).
    """
    sniffed = sniff_mime(data)
    usable = declared if declared and kind_for_mime(declared) == "file" else None
    if sniffed is not None and (sniffed not in _GENERIC or usable is None):
        return sniffed
    return usable or "application/octet-stream"


_EXTENSIONS: Final[Mapping[str, str]] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "application/pdf": "pdf",
    "application/zip": "zip",
    "application/msword": "doc",
    "application/vnd.ms-excel": "xls",
    "application/vnd.ms-powerpoint": "ppt",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "text/plain": "txt",
    "text/markdown": "md",
    "text/csv": "csv",
    "text/html": "html",
    "application/json": "json",
}


def extension_for_mime(mime: str) -> str:
    """A file extension for `mime` ("bin" when unknown)."""
    return _EXTENSIONS.get(mime, "bin")


def inline_name(data: bytes, mime: str) -> str:
    """A deterministic name for an inline file the client did not name:
    the first 16 hex digits of its SHA-256 and an extension for its type."""
    return f"{hashlib.sha256(data).hexdigest()[:16]}.{extension_for_mime(mime)}"
