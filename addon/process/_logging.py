"""`--log-format json`: one JSON object per log line, for log shippers (Loki, journald, ELK).

The relay's one-line-per-request record carries its fields in `request_fields` (see `_app.py`);
they become top-level keys here, so a request line reads
`{"time": ..., "level": "info", "logger": "kimi_free_api", "message": "POST /v1/... status=200 ...",
"method": "POST", "path": "/v1/chat/completions", "status": 200, ...}`. Every other line has the
first four keys only (plus `exception` with the traceback when there is one). Text stays the
default format; nothing here changes what is logged, only how it is written.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "use_json_logs"]

LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "request_fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def use_json_logs(root: logging.Logger | None = None) -> int:
    """Give every handler installed on the root logger (mitmproxy's terminal log) the JSON
    formatter; returns how many were switched."""
    handlers = (root or logging.getLogger()).handlers
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
    return len(handlers)
