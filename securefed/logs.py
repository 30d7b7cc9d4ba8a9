"""Structured logging for the daemons: one JSON object per line (``--log-json``) or clean text.

Both daemons log through ``get_logger(name)`` and attach fields with ``log(logger, event, **fields)``;
the JSON formatter writes ``{"ts", "level", "logger", "event", ...fields}`` so an operator can pipe
the stream into any log system without parsing prose.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_FIELDS_ATTR = "securefed_fields"
_ROOT = "securefed"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        obj.update(getattr(record, _FIELDS_ATTR, {}) or {})
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, sort_keys=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, _FIELDS_ATTR, {}) or {}
        extra = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{len(v)} items]"
    return str(v)


def setup_logging(*, json_lines: bool = False, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure the ``securefed`` logger tree once per process (idempotent: replaces our handler)."""
    root = logging.getLogger(_ROOT)
    for h in list(root.handlers):
        if getattr(h, "_securefed", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._securefed = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False
    # Library warnings (transformers, opacus) become log records too, so a --log-json stream stays
    # one JSON object per line.
    logging.captureWarnings(True)
    pyw = logging.getLogger("py.warnings")
    for h in list(pyw.handlers):
        if getattr(h, "_securefed", False):
            pyw.removeHandler(h)
    pyw.addHandler(handler)
    pyw.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{_ROOT}.{name}" if not name.startswith(_ROOT) else name)


def log(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with structured ``fields`` (kept as JSON keys in ``--log-json`` mode)."""
    logger.log(level, event, extra={_FIELDS_ATTR: fields})
