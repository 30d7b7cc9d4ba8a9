"""Structured logging for the daemons: one JSON object per line (``--log-json``) or clean text.

Both daemons log through ``get_logger(name)`` and attach fields with ``log(logger, event, **fields)``;
the JSON formatter writes ``{"ts", "level", "logger", "event", ...fields}`` so an operator can pipe
the stream into any log system without parsing prose. Events and field values pass through
``securefed.sanitize.clean`` in both formats: a peer's text cannot drive the terminal or forge a line. Plain-text lines start with the local date and
time (``2025-12-01 14:03:07.123``): a daemon runs for days.

In ``--log-json`` mode, ``route_native_stderr`` keeps stderr JSON-only: what native code writes to
file descriptor 2 itself (gRPC core and absl: ``I1201 ... ssl_transport_security.cc:...] ...``,
torch's C++ warnings, a Python traceback printed at exit) goes through a pipe and comes out as one
JSON record per line (logger ``native``, the level read from gRPC's I/W/E/F prefix). gRPC's own
verbosity stays the operator's to set (``GRPC_VERBOSITY``, ``GRPC_TRACE``); routing, not silencing,
so an error of gRPC's is never lost.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, TextIO

from securefed.sanitize import clean, clean_tree

_FIELDS_ATTR = "securefed_fields"
_ROOT = "securefed"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": clean(record.getMessage()),
        }
        # Peers' text reaches fields (reasons, details): inert for whoever renders the JSON later.
        obj.update(clean_tree(getattr(record, _FIELDS_ATTR, {}) or {}))
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, sort_keys=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        fields = getattr(record, _FIELDS_ATTR, {}) or {}
        extra = " ".join(f"{k}={clean(_short(v))}" for k, v in fields.items())
        line = f"{ts} {record.levelname:<7} {record.name}: {clean(record.getMessage())}"
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


# gRPC core / absl: "E1201 12:00:00.123456   4242 ssl_transport_security.cc:1234] message"
_NATIVE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+)\] ?(.*)$")
_NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_routed: dict[str, Any] = {}


def route_native_stderr() -> None:
    """Send what native code writes to fd 2 through our JSON handler (``--log-json`` only; once).

    Our handler moves to a duplicate of the original stderr; fd 2 (and ``sys.stderr``) becomes a pipe
    that a thread reads, one record per line. At exit the pipe is drained, so a last traceback still
    comes out (as JSON)."""
    if _routed or os.name != "posix":
        return
    root = logging.getLogger(_ROOT)
    ours = [h for h in root.handlers if getattr(h, "_securefed", False)]
    if not ours:
        return
    sys.stderr.flush()
    original = os.fdopen(os.dup(2), "w", buffering=1)
    for h in ours:
        h.setStream(original)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    native = get_logger("native")

    def pump() -> None:
        with os.fdopen(r, "r", errors="replace") as pipe:
            for line in pipe:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                m = _NATIVE.match(line)
                if m:
                    log(native, m.group(3), level=_NATIVE_LEVELS[m.group(1)], source=m.group(2))
                else:
                    log(native, line, level=logging.WARNING)

    th = threading.Thread(target=pump, name="native-stderr", daemon=True)
    th.start()
    _routed.update(thread=th, original=original)
    atexit.register(_drain_native_stderr)


def _drain_native_stderr() -> None:
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_routed["original"].fileno(), 2)  # closes the pipe's write end: the pump reads to its end
    _routed["thread"].join(2.0)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{_ROOT}.{name}" if not name.startswith(_ROOT) else name)


def log(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with structured ``fields`` (kept as JSON keys in ``--log-json`` mode)."""
    logger.log(level, event, extra={_FIELDS_ATTR: fields})
