"""`kimi-free-api replay`: run captured Kimi answers through the translator and check the output.

Inputs are mitmproxy flow files (`mitmdump -w`, or HAR: `FlowReader` reads both) and fixture
folders (`upstream.sse` = legacy, `upstream.bin` = connect; a parent folder means every scenario
below it). For each Kimi completion exchange the report says which events the decoder saw,
which kinds it did not understand, whether each of Kimi's messages is valid against
`schemas/kimi/` and which of its fields those schemas do not name ("unknown fields"), whether
every OpenAI object the proxy would send is valid against `schemas/`, and the answer a client
would get. No proxy and no network are involved. The proxy records its own Kimi calls as flows
(`--set record_upstream=FILE`, or in a `mitmdump -w` file: addon/capture/_upstream_flows.py), so a
user's capture of the proxy reads the same way as a browser's.

Exit code: 0 all good; 1 a schema violation or a translator crash (any exception other than
`TranslatorError`, which is a normal outcome: it is reported as the OpenAI error it maps to);
2 an input could not be read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TextIO

from mitmproxy import http
from mitmproxy.exceptions import FlowReadException
from mitmproxy.io import FlowReader

from schemas import schema_errors
from translator._errors import RemoteProtocolError, TranslatorError
from translator._upstream import StreamDecoder, Unknown, UpstreamEvent
from translator.chat._assembler import State
from translator.chat._fold import fold_completion
from translator.chat._response import ResponseTranslator
from translator.connect._stream import ConnectDecoder, connect_error
from translator.legacy._errors import kimi_error
from translator.legacy._stream import LegacyDecoder

from ._upstream_check import check_upstream

__all__ = ["Exchange", "ExchangeReport", "ReadFailure", "collect", "replay_exchange", "run_replay"]

DialectName = Literal["legacy", "connect"]

NO_BODY_HINT: Final = (
    "no body stored: mitmproxy does not save streamed bodies unless told to; record with "
    "`mitmdump -w FILE --set store_streamed_bodies=true` (mitmproxy 12+), see docs/testing.md"
)
#: the body is fed in slices of this size, so the decoders' split handling is exercised too
PIECE_BYTES: Final = 1024
_LEGACY_PATH: Final = re.compile(r"^/api/chat/([^/?#]+)/completion/stream/?(?:[?#]|$)")
_FIXTURE_BODIES: Final[dict[str, DialectName]] = {
    "upstream.sse": "legacy",
    "upstream.bin": "connect",
}
#: the meta.json keys that are ResponseTranslator arguments (as in fixtures/golden.py, which
#: the installed command cannot import: fixtures are test data)
_TRANSLATOR_KEYS: Final = (
    *("completion_id", "model", "created", "silent", "include_usage", "prompt_text"),
    *("max_continuations", "system_fingerprint", "fallback_id"),
)
_SAMPLE_CHARS: Final = 200
_TEXT_CHARS: Final = 2000


class ReadFailure(Exception):
    """An input that cannot be read (missing, not a flow file, a folder without scenarios)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """One Kimi completion answer to check. `body` is None when there is nothing to translate;
    `note` then says why."""

    source: str
    dialect: DialectName
    body: bytes | None
    status: int = 200
    json_body: bool = False  # Kimi answered with a JSON (error) body instead of a stream
    completion_id: str | None = None
    note: str = ""
    #: fixture folders: continuation bodies (`upstream.2.sse`, ...) fed after a `length` stop
    continuations: tuple[bytes, ...] = ()
    #: fixture folders: the ResponseTranslator arguments meta.json names
    translator_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class ExchangeReport:
    """What replaying one exchange showed. `violations` are schema (or stream/fold) breaches;
    `crash` is an unexpected exception; `error` the OpenAI error the client would get."""

    source: str
    dialect: str
    note: str = ""
    events: dict[str, int] = field(default_factory=dict)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    #: keys of Kimi's messages that schemas/kimi/*.json do not name: [{"field", "count"}]
    unknown_fields: list[dict[str, Any]] = field(default_factory=list)
    kimi_messages: int = 0
    chunks: int = 0
    violations: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    error_status: int | None = None
    crash: str | None = None
    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and self.crash is None


# --- finding exchanges ----------------------------------------------------------------------


def collect(path: str) -> list[Exchange]:
    """Every Kimi completion exchange in `path` (a flow file or a fixture folder).

    Raises:
        ReadFailure: the path cannot be read.
    """
    p = Path(path)
    if p.is_dir():
        return _from_folder(p)
    try:
        with p.open("rb") as fo:
            flows = list(FlowReader(fo).stream())
    except (OSError, FlowReadException) as exc:
        raise ReadFailure(f"{path}: cannot read flows: {exc}") from exc
    out: list[Exchange] = []
    for index, flow in enumerate(flows):
        if isinstance(flow, http.HTTPFlow) and (ex := _from_flow(flow, f"{path} #{index}")):
            out.append(ex)
    return out


def _from_folder(folder: Path) -> list[Exchange]:
    scenarios = sorted(
        {f.parent for name in _FIXTURE_BODIES for f in folder.rglob(name) if f.is_file()}
    )
    if not scenarios:
        raise ReadFailure(f"{folder}: no upstream.sse or upstream.bin below this folder")
    out: list[Exchange] = []
    for scenario in scenarios:
        for name, dialect in _FIXTURE_BODIES.items():
            if (scenario / name).is_file():
                out.append(_from_scenario(scenario, name, dialect))
    return out


def _from_scenario(folder: Path, name: str, dialect: DialectName) -> Exchange:
    """One fixture folder, read the way fixtures/golden.py describes it."""
    try:
        body = (folder / name).read_bytes()
        continuations: list[bytes] = []
        while (follow := folder / f"upstream.{len(continuations) + 2}.sse").is_file():
            continuations.append(follow.read_bytes())
        meta_file = folder / "meta.json"
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ReadFailure(f"{folder}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ReadFailure(f"{folder}/meta.json: not a JSON object")
    return Exchange(
        source=str(folder),
        dialect=dialect,
        body=body,
        continuations=tuple(continuations),
        # the golden tests' translator settings (silent, prompt_text, ...), so replay agrees
        translator_kwargs={k: meta[k] for k in _TRANSLATOR_KEYS if k in meta},
    )


def _from_flow(flow: http.HTTPFlow, source: str) -> Exchange | None:
    request = flow.request
    if request.method != "POST":
        return None
    route = request.path.split("?", 1)[0].rstrip("/")
    match = _LEGACY_PATH.match(request.path)
    dialect: DialectName
    if match:
        dialect, completion_id = "legacy", match.group(1)
    elif route.endswith("ChatService/Chat") or (
        route.endswith("/Chat") and "connect+json" in request.headers.get("content-type", "")
    ):
        dialect, completion_id = "connect", None
    else:
        return None
    source = f"{source} {request.method} {route}"
    response = flow.response
    if response is None:
        why = f" ({flow.error.msg})" if flow.error is not None else ""
        return Exchange(source=source, dialect=dialect, body=None, note=f"no response{why}")
    if response.raw_content is None:
        return Exchange(source=source, dialect=dialect, body=None, note=NO_BODY_HINT)
    content_type = response.headers.get("content-type", "").lower()
    if not response.raw_content and response.status_code == 200:
        # browsers' HAR exports usually leave streamed bodies out
        note = "empty body stored; " + NO_BODY_HINT.removeprefix("no body stored: ")
        return Exchange(source=source, dialect=dialect, body=None, note=note)
    return Exchange(
        source=source,
        dialect=dialect,
        # strict=False: a body with an unknown content-encoding is checked as it was stored
        body=response.get_content(strict=False) or b"",
        status=response.status_code,
        json_body=content_type.startswith("application/json"),
        completion_id=completion_id,
    )


# --- replaying one exchange -----------------------------------------------------------------


class _Tee:
    """Passes a decoder's events through and keeps a sample of each unknown kind, so the
    report can show what Kimi sent that we did not understand."""

    def __init__(self, inner: StreamDecoder, samples: dict[str, str]) -> None:
        self.inner = inner
        self.samples = samples

    def feed(self, data: bytes) -> list[UpstreamEvent]:
        return self._see(self.inner.feed(data))

    def close(self) -> list[UpstreamEvent]:
        return self._see(self.inner.close())

    def _see(self, events: list[UpstreamEvent]) -> list[UpstreamEvent]:
        for ev in events:
            if isinstance(ev, Unknown):
                self.samples.setdefault(ev.kind, ev.payload[:_SAMPLE_CHARS])
        return events


def replay_exchange(ex: Exchange) -> ExchangeReport:
    """Translate one exchange the way the proxy would and check everything it would send."""
    report = ExchangeReport(source=ex.source, dialect=ex.dialect, note=ex.note)
    if ex.body is None:
        return report
    legacy = ex.dialect == "legacy"
    if ex.status >= 400 or ex.json_body:
        # Kimi refused the call: the proxy answers with the mapped error, no stream at all
        # (the same mapping as addon/upstream/_dialects.py).
        refusal: RemoteProtocolError = (kimi_error if legacy else connect_error)(ex.status, ex.body)
        _set_error(report, refusal)
        return report
    for body in (ex.body, *ex.continuations):
        upstream = check_upstream(ex.dialect, body)
        report.kimi_messages += upstream.messages
        report.violations += upstream.violations
        for name, count in upstream.unknown_fields.items():
            known = next((u for u in report.unknown_fields if u["field"] == name), None)
            if known is None:
                report.unknown_fields.append({"field": name, "count": count})
            else:
                known["count"] += count
    samples: dict[str, str] = {}
    tee = _Tee(LegacyDecoder() if legacy else ConnectDecoder(), samples)
    kwargs: dict[str, Any] = {"completion_id": ex.completion_id, "model": "kimi", "created": 0}
    translator = ResponseTranslator(tee, **(kwargs | dict(ex.translator_kwargs)))
    chunks: list[dict[str, Any]] = []
    try:
        for index, body in enumerate((ex.body, *ex.continuations)):
            if index:
                if translator.continuation_segment is None:
                    report.note = f"{len(ex.continuations) - index + 1} continuation(s) unused"
                    break
                translator.begin_continuation(_Tee(LegacyDecoder(), samples))
                if translator.state is not State.ANSWERING:
                    break  # a moderation verdict ended the answer: the body is not fed
            for start in range(0, len(body), PIECE_BYTES):
                chunks += translator.feed(body[start : start + PIECE_BYTES])
        segment = translator.continuation_segment
        if segment is not None:
            report.note = f"stopped at Kimi's length limit; the proxy would continue {segment}"
        chunks += translator.close()
        translator.close()  # an error found while closing is raised by the next call
    except TranslatorError as err:
        _set_error(report, err)
    except Exception as exc:  # a translator bug: the point of replay is to find these
        report.crash = f"{type(exc).__name__}: {exc}"
    report.events = translator.event_counts
    for key, n in sorted(report.events.items()):
        if key.startswith("Unknown:"):
            kind = key.removeprefix("Unknown:")
            report.unknown.append({"kind": kind, "count": n, "sample": samples.get(kind, "")})
    report.chunks = len(chunks)
    for i, chunk in enumerate(chunks):
        report.violations += [f"chunk {i}: {e}" for e in schema_errors("openai.chunk", chunk)]
    report.content, report.reasoning, report.finish_reason = _answer(chunks)
    if report.error is None and report.crash is None:
        _check_fold(report, chunks, str(ex.translator_kwargs.get("prompt_text", "")))
    return report


def _set_error(report: ExchangeReport, err: TranslatorError) -> None:
    report.error = err.to_openai()
    report.error_status = err.status
    report.violations += [f"error: {e}" for e in schema_errors("openai.error", report.error)]


def _answer(chunks: list[dict[str, Any]]) -> tuple[str, str, str | None]:
    content: list[str] = []
    reasoning: list[str] = []
    finish: str | None = None
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            finish = choice.get("finish_reason") or finish
    return "".join(content), "".join(reasoning), finish


def _check_fold(report: ExchangeReport, chunks: list[dict[str, Any]], prompt_text: str) -> None:
    """The non-streaming answer must be valid and say what the stream said."""
    try:
        folded = fold_completion(chunks, prompt_text=prompt_text)
    except Exception as exc:  # it raises only for unclosed chunks, which close() never gives
        report.crash = f"fold_completion: {type(exc).__name__}: {exc}"
        return
    report.violations += [f"fold: {e}" for e in schema_errors("openai.response", folded)]
    choices = folded.get("choices") or [{}]
    message = choices[0].get("message") or {}
    if (message.get("content") or "") != report.content:
        report.violations.append("fold: message.content differs from the streamed content")
    if (message.get("reasoning_content") or "") != report.reasoning:
        report.violations.append("fold: reasoning_content differs from the streamed reasoning")
    if choices[0].get("finish_reason") != report.finish_reason:
        report.violations.append("fold: finish_reason differs from the stream's")


# --- the command ----------------------------------------------------------------------------


def run_replay(paths: Sequence[str], *, as_json: bool, out: TextIO) -> int:
    """Replay every exchange in `paths`, write the report to `out`, return the exit code."""
    reports: list[ExchangeReport] = []
    unreadable: list[str] = []
    inputs: list[dict[str, Any]] = []
    for path in paths:
        try:
            exchanges = collect(path)
        except ReadFailure as exc:
            unreadable.append(str(exc))
            continue
        inputs.append({"path": path, "exchanges": len(exchanges)})
        reports += [replay_exchange(ex) for ex in exchanges]
    code = 2 if unreadable else (0 if all(r.ok for r in reports) else 1)
    if as_json:
        doc = {
            "exit_code": code,
            "inputs": inputs,
            "unreadable": unreadable,
            "exchanges": [asdict(r) for r in reports],
            "summary": _summary(reports, unreadable),
        }
        out.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    else:
        out.writelines(_text(reports, inputs, unreadable))
    return code


def _summary(reports: list[ExchangeReport], unreadable: list[str]) -> dict[str, int]:
    return {
        "exchanges": len(reports),
        "violations": sum(len(r.violations) for r in reports),
        "crashes": sum(r.crash is not None for r in reports),
        "errors": sum(r.error is not None for r in reports),
        "without_body": sum("store_streamed_bodies" in r.note for r in reports),
        "unknown_kinds": sum(len(r.unknown) for r in reports),
        "unknown_fields": sum(len(r.unknown_fields) for r in reports),
        "unreadable": len(unreadable),
    }


def _text(
    reports: list[ExchangeReport], inputs: list[dict[str, Any]], unreadable: list[str]
) -> Iterator[str]:
    for message in unreadable:
        yield f"cannot read {message}\n"
    for item in inputs:
        if not item["exchanges"]:
            yield f"{item['path']}: no Kimi completion exchange found\n"
    for r in reports:
        yield f"== {r.source} [{r.dialect}]\n"
        if r.note:
            yield f"   note: {r.note}\n"
        if not r.events and r.error is None and r.crash is None:
            continue
        events = ", ".join(f"{k}={v}" for k, v in sorted(r.events.items())) or "none"
        yield f"   events: {events}\n"
        for u in r.unknown:
            yield f"   unknown: {u['kind']} x{u['count']}  e.g. {u['sample']}\n"
        for f in r.unknown_fields:
            yield f"   unknown field: {f['field']} x{f['count']}\n"
        yield f"   chunks: {r.chunks}, schema violations: {len(r.violations)}\n"
        for violation in r.violations:
            yield f"     ! {violation}\n"
        if r.crash is not None:
            yield f"   CRASH: {r.crash}\n"
        if r.error is not None:
            e = r.error.get("error") or {}
            yield f"   error (HTTP {r.error_status}): {e.get('type')}: {e.get('message')}\n"
        if r.finish_reason is not None or r.error is None:
            yield f"   finish_reason: {r.finish_reason}\n"
        if r.reasoning:
            yield f"   reasoning: {_clip(r.reasoning)}\n"
        yield f"   content: {_clip(r.content)}\n"
    s = _summary(reports, unreadable)
    yield (
        f"== {s['exchanges']} exchange(s): {s['violations']} violation(s), "
        f"{s['crashes']} crash(es), {s['errors']} error answer(s), "
        f"{s['unknown_kinds']} unknown kind(s), {s['unknown_fields']} unknown field(s), "
        f"{s['without_body']} without body, "
        f"{s['unreadable']} unreadable input(s)\n"
    )


def _clip(text: str) -> str:
    text = text.replace("\n", "\n     ")
    if len(text) <= _TEXT_CHARS:
        return text
    return f"{text[:_TEXT_CHARS]}… ({len(text) - _TEXT_CHARS} more chars)"
