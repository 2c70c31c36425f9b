"""data: URLs (RFC 2397), magic-byte sniffing, and names for inline files."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from translator._dataurl import (
    DataURL,
    effective_mime,
    extension_for_mime,
    inline_name,
    kind_for_mime,
    parse_data_url,
    sniff_mime,
)
from translator._errors import LocalProtocolError

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 16
GIF = b"GIF89a" + b"\0" * 10
WEBP = b"RIFF\x24\0\0\0WEBPVP8 " + b"\0" * 16
BMP = b"BM" + b"\x46\0\0\0" + b"\0\0\0\0" + b"\x36\0\0\0" + b"\0" * 30
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100


def zip_with(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    return buffer.getvalue()


# --- parse_data_url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", DataURL(mime_type="image/png", data=PNG[:8])),
        ("data:image/png;base64,iVBORw0KGgo", DataURL(mime_type="image/png", data=PNG[:8])),
        ("DATA:Image/PNG;BASE64,iVBO Rw0K\nGgo=", DataURL(mime_type="image/png", data=PNG[:8])),
        ("data:,Hello%2C%20World%21", DataURL(mime_type="text/plain", data=b"Hello, World!")),
        ("data:;base64,SGk=", DataURL(mime_type="text/plain", data=b"Hi")),
        (
            "data:text/plain;charset=utf-8,%E4%BD%A0%E5%A5%BD",
            DataURL(mime_type="text/plain", data="你好".encode()),
        ),
        ("data:text/plain;base64,SGk%3D", DataURL(mime_type="text/plain", data=b"Hi")),
        ("data:application/pdf;base64,", DataURL(mime_type="application/pdf", data=b"")),
        ("data:text/plain,a,b", DataURL(mime_type="text/plain", data=b"a,b")),
    ],
)
def test_parse_data_url(url, expected):
    assert parse_data_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/a.png", "must start with 'data:'"),
        ("dat", "must start with 'data:'"),
        ("data:image/png;base64", "no ','"),
        ("data:png;base64,AAAA", "not a media type"),
        ("data:image/png;base64,A", "wrong length"),
        ("data:image/png;base64,AAAAA", "wrong length"),
        ("data:image/png;base64,AA*A", "not valid base64"),
        ("data:image/png;base64,AA=A", "not valid base64"),
        ("data:image/png;base64,A===", "wrong length"),
    ],
)
def test_bad_data_urls_are_refused(url, why):
    with pytest.raises(LocalProtocolError) as info:
        parse_data_url(url, param="messages[0].content[1].image_url.url")
    assert why in info.value.message
    assert info.value.message.startswith("invalid data URL")
    assert info.value.param == "messages[0].content[1].image_url.url"
    assert info.value.code == "invalid_value"
    assert info.value.status == 400


@given(st.binary(max_size=200), st.sampled_from(["image/png", "application/pdf", "text/plain"]))
def test_base64_round_trip(data, mime):
    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    assert parse_data_url(url) == DataURL(mime_type=mime, data=data)


@given(st.text(max_size=100))
def test_parse_data_url_is_total(text):
    try:
        result = parse_data_url(text)
    except LocalProtocolError:
        return
    assert isinstance(result.data, bytes)


# --- sniff_mime ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (b"GIF87a" + b"\0" * 10, "image/gif"),
        (WEBP, "image/webp"),
        (BMP, "image/bmp"),
        (PDF, "application/pdf"),
        (
            zip_with("[Content_Types].xml", "word/document.xml"),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        (
            zip_with("[Content_Types].xml", "xl/workbook.xml"),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
        (
            zip_with("[Content_Types].xml", "ppt/presentation.xml"),
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        ),
        (zip_with("readme.txt"), "application/zip"),
        (OLE + "WordDocument".encode("utf-16-le"), "application/msword"),
        (OLE + "Workbook".encode("utf-16-le"), "application/vnd.ms-excel"),
        (OLE + "PowerPoint Document".encode("utf-16-le"), "application/vnd.ms-powerpoint"),
        (OLE, "application/x-ole-storage"),
        (b"hello world\n", "text/plain"),
        ("\ufeff中文，带 BOM\r\n\tand tabs".encode(), "text/plain"),
        # a multi-byte character cut by the 8 KiB window is still text
        (("a" * 8191 + "中" + "b" * 10).encode(), "text/plain"),
        (b"", None),
        (b"\x00\x01\x02binary", None),
        (b"\xff\xfe\xfd not utf-8", None),
        # "BM" alone is a word, not a bitmap
        (b"BMW is a car brand", "text/plain"),
        (b"RIFF\x24\0\0\0WAVEfmt ", None),
    ],
)
def test_sniff_mime(data, mime):
    assert sniff_mime(data) == mime


def test_truncated_utf8_at_the_very_end_is_not_text():
    assert sniff_mime("ok 中".encode()[:-1]) is None


@given(st.binary(max_size=300))
def test_sniff_is_total(data):
    result = sniff_mime(data)
    assert result is None or "/" in result


# --- kind, effective type, names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "kind"),
    [
        ("image/png", "image"),
        ("image/jpeg", "image"),
        ("image/gif", "image"),
        ("image/webp", "image"),
        ("image/bmp", "image"),
        ("image/svg+xml", "file"),
        ("application/pdf", "file"),
        ("text/plain", "file"),
    ],
)
def test_kind_for_mime(mime, kind):
    assert kind_for_mime(mime) == kind


@pytest.mark.parametrize(
    ("data", "declared", "expected"),
    [
        # the bytes win over a wrong claim
        (PNG, "application/pdf", "image/png"),
        (PDF, "image/png", "application/pdf"),
        # a claimed image that is no image is a plain file
        (b"\x00\x01binary", "image/png", "application/octet-stream"),
        (b"\x00\x01binary", None, "application/octet-stream"),
        (b"\x00\x01binary", "application/x-thing", "application/x-thing"),
        # a family sniff is refined by a declared type of that family
        (b"a,b\n1,2\n", "text/csv", "text/csv"),
        (b"a,b\n1,2\n", None, "text/plain"),
        (b"a,b\n1,2\n", "image/png", "text/plain"),
        (zip_with("mimetype"), "application/epub+zip", "application/epub+zip"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", "image/svg+xml"),
    ],
)
def test_effective_mime(data, declared, expected):
    assert effective_mime(data, declared) == expected


def test_inline_name_is_the_content_hash_and_an_extension():
    name = inline_name(PNG, "image/png")
    assert name == hashlib.sha256(PNG).hexdigest()[:16] + ".png"
    assert inline_name(PNG, "image/png") == name
    assert inline_name(b"other", "image/png") != name
    assert inline_name(b"x", "application/x-unknown").endswith(".bin")
    assert extension_for_mime("image/jpeg") == "jpg"
