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
so an error of gRPC's is never lost. The daemons route in text mode too (``keep_python_stderr``: only
native writes go through the pipe, so progress bars still see the terminal), so gRPC's lines also
start with the date; and ``watch_native`` lets a daemon react to one (a failed TLS handshake).
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
from collections.abc import Callable
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
_watchers: list[Callable[[int, str, str], None]] = []  # (level, source, message) of each routed native line


def watch_native(fn: Callable[[int, str, str], None]) -> None:
    """Call ``fn(level, source, message)`` for every line native code writes once stderr is routed."""
    _watchers.append(fn)


def fatal(line: str) -> None:
    """The one line a command ends with on a user or operator error: a JSON record at level "error"
    when stderr is routed (``--log-json``: it stays JSON only, and the level says what it is), else
    ``securefed: error: LINE`` on stderr."""
    if _routed and not _routed.get("text"):
        log(get_logger("cli"), line, level=logging.ERROR)
    else:
        print(f"securefed: error: {line}", file=sys.stderr)


def route_native_stderr(*, keep_python_stderr: bool = False) -> None:
    """Send what native code writes to fd 2 through our handler (once; in a real process only: not
    while a test harness holds ``sys.stderr``).

    Our handler moves to a duplicate of the original stderr; fd 2 (and, unless ``keep_python_stderr``,
    ``sys.stderr``) becomes a pipe that a thread reads, one record per line. At exit the pipe is
    drained, so a last traceback still comes out (as JSON)."""
    if _routed or os.name != "posix" or sys.stderr is not sys.__stderr__:
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
    if keep_python_stderr:  # Python's own writes (progress bars, a traceback) go to the real stderr
        sys.stderr = original
    native = get_logger("native")

    def pump() -> None:
        with os.fdopen(r, "r", errors="replace") as pipe:
            for line in pipe:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                m = _NATIVE.match(line)
                level, source, message = (_NATIVE_LEVELS[m.group(1)], m.group(2), m.group(3)) if m else \
                    (logging.WARNING, "", line)
                log(native, message, level=level, **({"source": source} if source else {}))
                for fn in _watchers:
                    try:
                        fn(level, source, message)
                    except Exception:  # noqa: BLE001 - a watcher must never stop the pump (and so stderr)
                        pass

    th = threading.Thread(target=pump, name="native-stderr", daemon=True)
    th.start()
    _routed.update(thread=th, original=original, text=keep_python_stderr)
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
