"""One structured logging setup: logfmt text or JSON lines, each with the service and
the request id (and, within a span of a trace, its trace_id and span_id), and with anything
that looks like a credential redacted."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Literal

from mesh import context, tracing

# Bearer tokens, JWTs and `token=`/`password=` pairs, should one ever be formatted into a message.
_SECRETS = re.compile(
    r"(?i)(bearer\s+)\S+"
    r"|eyJ[\w-]+\.[\w-]+\.[\w-]*"
    r"|((?:token|password|refresh_token|access_token)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
)
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "service",
    "trace_id",
    "span_id",
}


# Every match of _SECRETS holds one of these, case-folded: most lines skip the regex.
_SECRET_HINTS = ("bearer", "eyj", "token", "password")
_NEEDS_QUOTES = re.compile(r'[ ="\n]')


def redact(text: str) -> str:
    lowered = text.casefold()
    if not any(hint in lowered for hint in _SECRET_HINTS):
        return text
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or "") + "[redacted]", text)


class LogFormatter(logging.Formatter):
    def __init__(self, service: str, style: Literal["text", "json"]) -> None:
        super().__init__()
        self._service = service
        self._json = style == "json"
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # one strftime a second, not one a line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        fields: dict[str, object] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "request_id": context.request_id.get(),
        }
        if (ids := tracing.log_ids()) is not None:
            fields["trace_id"], fields["span_id"] = ids
        fields["msg"] = redact(record.getMessage())
        fields.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS)
        if record.exc_info:
            fields["error"] = redact(self.formatException(record.exc_info))
        if self._json:
            return json.dumps(fields, default=str)
        return " ".join(f"{key}={_logfmt(value)}" for key, value in fields.items())


def _logfmt(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


def configure_logging(service: str, level: str = "INFO", style: Literal["text", "json"] = "text") -> None:
    """Sends every logger to stderr in one format. Called once, by the process entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(service, style))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
