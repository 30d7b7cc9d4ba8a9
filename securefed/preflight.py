"""``--check``: what both daemons validate offline before they run, and how the verdict is printed.

``securefed server --config F --check`` and ``securefed client --config F --check`` run every check
that needs no peer (config, certificates and their validity, model directory, data, budget
feasibility, state), print one line per check (``ok``, ``warn`` or ``FAIL``) and exit 0, or 2 when
anything failed. The checks themselves are ``client.preflight`` and ``server.preflight``; this
module holds what they share: the result type, running a check so that a securefed error becomes
a ``FAIL`` line (never a traceback), certificate validity, and writable state directories.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cryptography import x509

from securefed.errors import SecureFedError

EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "FAIL"
    detail: str


class Checks:
    """Collects checks; ``run(name, fn)`` turns what ``fn`` raises into a FAIL and returns its value."""

    def __init__(self) -> None:
        self.items: list[Check] = []

    def add(self, name: str, status: str, detail: str) -> None:
        self.items.append(Check(name, status, detail))

    def ok(self, name: str, detail: str) -> None:
        self.add(name, "ok", detail)

    def warn(self, name: str, detail: str) -> None:
        self.add(name, "warn", detail)

    def fail(self, name: str, detail: str) -> None:
        self.add(name, "FAIL", detail)

    def run(self, name: str, fn: Callable[[], object]) -> object | None:
        try:
            return fn()
        except SecureFedError as exc:
            self.fail(name, str(exc))
        except OSError as exc:
            self.fail(name, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return None

    @property
    def failed(self) -> bool:
        return any(c.status == "FAIL" for c in self.items)

    def report(self, what: str, out: TextIO | None = None) -> int:
        """Print one line per check and a verdict; the exit code (0, or 2 when anything failed)."""
        out = out or sys.stdout
        for c in self.items:
            print(f"{c.status:<4}  {c.name}: {c.detail}", file=out)
        n_fail = sum(c.status == "FAIL" for c in self.items)
        n_warn = sum(c.status == "warn" for c in self.items)
        if n_fail:
            print(f"{what}: {n_fail} check(s) failed; fix them before starting", file=out)
            return 2
        print(f"{what}: ready ({len(self.items)} checks, {n_warn} warning(s))", file=out)
        return 0


def certificate_validity(checks: Checks, name: str, pem: bytes, *, now: dt.datetime | None = None) -> None:
    """``name``'s certificate: FAIL when expired or not yet valid, warn when it expires within 30 days."""
    cert = x509.load_pem_x509_certificate(pem)
    now = now or dt.datetime.now(dt.timezone.utc)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    subject = cert.subject.rfc4514_string()
    if now < start:
        checks.fail(name, f"{subject} is not valid before {start:%Y-%m-%d %H:%M} UTC (check this machine's clock)")
    elif now >= end:
        checks.fail(name, f"{subject} expired on {end:%Y-%m-%d} UTC: have the operator issue a new one")
    elif end - now < dt.timedelta(days=EXPIRY_WARNING_DAYS):
        checks.warn(name, f"{subject} expires on {end:%Y-%m-%d} UTC, in {(end - now).days} days: renew it soon")
    else:
        checks.ok(name, f"{subject} valid until {end:%Y-%m-%d}")


def writable_dir(checks: Checks, name: str, path: Path) -> None:
    """``path`` exists and is writable, or could be created (its nearest existing parent is writable)."""
    p = Path(path)
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        checks.fail(name, f"{probe} is not a directory")
    elif not os.access(probe, os.W_OK | os.X_OK):
        checks.fail(name, f"{probe} is not writable by this user: {p} cannot be {'used' if p.exists() else 'created'}")
    else:
        checks.ok(name, f"{p} {'writable' if p.exists() else 'will be created'}")
