"""One sanitiser for every string a peer can put in front of an operator.

Members and servers send free text (alert details, decline reasons, names in ledgers, error details).
Printed raw, an ESC byte starts a terminal control sequence (rewrite the screen, hide lines, set the
window title), a newline forges a second log line, and a Unicode bidi override (U+202E) makes a line
read backwards in a terminal, an editor or a browser. ``clean`` makes such text inert and visible:
every control or format character (Unicode categories Cc, Cf, Cs, Co, Cn, and the line and paragraph
separators Zl, Zp) becomes a printable escape (``\\x1b``, ``\\u202e``), so the operator sees that
something was there without the terminal acting on it, and the result is one line. Every sink uses it:
the terminal (``securefed status``), log lines (both formatters in ``securefed.logs``), the HTML and
JSON audit report, the JSON of ``status --json`` and the alert file itself.
"""

from __future__ import annotations

import unicodedata
from typing import Any

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
ELLIPSIS = "..."


def _escape(ch: str) -> str:
    cp = ord(ch)
    return f"\\x{cp:02x}" if cp < 0x100 else (f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}")


def clean(text: object, max_len: int | None = None) -> str:
    """``text`` as one line of inert, printable characters (escapes for the rest), at most ``max_len``
    characters long when given (cut with ``...``)."""
    s = text if isinstance(text, str) else str(text)
    if s.isascii() and s.isprintable():  # the common case, fast: nothing to do
        out = s
    else:
        out = "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in s)
    if max_len is not None and len(out) > max_len:
        out = out[: max(0, max_len - len(ELLIPSIS))] + ELLIPSIS
    return out


def clean_tree(value: Any) -> Any:
    """``clean`` applied to every string in nested dicts, lists and tuples (keys included)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean_tree(k): clean_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clean_tree(v) for v in value)
    return value
