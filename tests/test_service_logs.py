"""`--log-format json`: one JSON object per request line, with the fields of the text line."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from addon.cli import build_parser
from addon.process._logging import JsonFormatter
from fixtures.fake_kimi import FakeKimi
from tests.service_process import running_service

TOKEN = "rt-logs-4e1b7c9d2a"


def test_json_formatter_lifts_the_request_fields():
    record = logging.LogRecord("kimi_free_api", logging.INFO, __file__, 1, "%s", ("x y",), None)
    record.request_fields = {"method": "GET", "status": 200, "ttfb_ms": None}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "info"
    assert obj["logger"] == "kimi_free_api"
    assert obj["message"] == "x y"
    assert obj["method"] == "GET"
    assert obj["status"] == 200
    assert obj["ttfb_ms"] is None
    assert obj["time"].endswith("+00:00")


def test_json_formatter_keeps_tracebacks_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "kimi_free_api", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_log_format_option_env_and_default(monkeypatch):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert build_parser().parse_args(["run"]).log_format == "text"
    assert build_parser().parse_args(["run", "--log-format", "json"]).log_format == "json"
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert build_parser().parse_args(["run"]).log_format == "json"
    assert build_parser().parse_args(["demo", "--log-format", "text"]).log_format == "text"


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_a_real_process_logs_one_json_object_per_request(tmp_path):
    async with FakeKimi(dialect_routes="legacy") as fake:
        args = ["--kimi-base-url", fake.base_url, "--dialect", "legacy", "--log-format", "json"]
        async with running_service(args, tmp_path) as proxy:
            async with httpx.AsyncClient(timeout=30) as http:
                body = {"model": "kimi", "messages": [{"role": "user", "content": "hi"}]}
                resp = await http.post(
                    proxy.url + "/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {TOKEN}"},
                )
                assert resp.status_code == 200
            await proxy.wait_for_output('"path": "/v1/chat/completions"')
        objects = []
        for line in proxy.lines():
            if line.strip():
                objects.append(json.loads(line))  # every line is JSON, mitmproxy's too
        requests = [o for o in objects if o.get("path") == "/v1/chat/completions"]
        assert len(requests) == 1
        line = requests[0]
        assert line["method"] == "POST"
        assert line["status"] == 200
        assert line["model"] == "kimi"
        assert line["dialect"] == "legacy"
        assert line["account"] == 0
        assert isinstance(line["duration_ms"], int)
        assert line["upstream_calls"] >= 1
        assert line["failovers"] == 0
        assert set(line) >= {"time", "level", "message", "ttfb_ms"}
        assert TOKEN not in proxy.text()
