"""Structured logging: one line per event, as logfmt text or JSON.

Callers log an event name and fields::

    log_event(logger, "delivery", qid="AB12", size=123, result="250")

Values are quoted as needed; nothing here ever logs message bodies, and
callers never pass passwords (there is no field for them).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from estafeta.metrics import record_event

_FIELDS = "estafeta_fields"


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    # Metrics count events whatever the log level (estafeta.metrics).
    record_event(event, fields)
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


_NEEDS_QUOTES = re.compile('[ ="\\\\\n\r\t]')


def _logfmt_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    text = str(value)
    if text == "" or _NEEDS_QUOTES.search(text):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        return f'"{escaped}"'
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record),
            record.levelname.lower(),
            record.name.removeprefix("estafeta."),
            _logfmt_value(record.getMessage()),
        ]
        fields = getattr(record, _FIELDS, None) or {}
        parts.extend(f"{key}={_logfmt_value(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(getattr(record, _FIELDS, None) or {})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    # What neither format prints, the logging module need not gather for
    # every record (https://docs.python.org/3/howto/logging.html#optimization):
    # the caller's file and line (a walk up the stack), thread, process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every command line at INFO and DEBUG, AUTH exchanges
    # included: secrets must never reach a log, so it stays at WARNING.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
