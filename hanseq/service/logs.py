"""The server's logs: a line a person reads on a terminal, or one JSON object per line for a
log pipeline (``log_format``: auto = text on a terminal, JSON otherwise).

Each RPC ends in one ``hanseq.requests`` record whose fields (request id, method, task, code,
ms, and what the handler noted: queue_ms, compute_ms, batch_size, cached, ...) travel as
``extra={"fields": ...}``: the JSON formatter writes them as keys, the text one after the
message. ``request_id`` and ``note`` are the call's context, set by the error interceptor and
filled by the handlers, so neither needs the other's objects.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, TextIO

# The id of the request being handled, for the log and an INTERNAL error's message.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# What the handler learnt about the call (timings, batch size, cached), logged when it ends.
# A dict the interceptor sets per call: tasks the handler starts share it (contexts copy the
# reference), so a batch's items may note too.
call_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "call_fields", default=None
)

FORMATS = ("auto", "text", "json")


def note(**fields: Any) -> None:
    """Add fields to the current call's log record (nothing outside a call)."""
    current = call_fields.get()
    if current is not None:
        current.update(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the record's
    fields, and the traceback as one string where there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``: for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} {pairs}{newline}{rest}"


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """The root handler for ``hanseq serve`` (replacing any earlier one)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
