"""Crash-safe file writes (the one write-then-rename used for keys, checkpoints, ledger exports and
reports; the one durable append of a log line), and the one read of a secret file, refused when group
or others can reach it."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from securefed.errors import ConfigError


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (POSIX: the directory entry is data too)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SECRET_MODE = 0o600  # the default: a caller that forgets the mode never leaks a secret
SHARED_MODE = 0o644  # files meant for others: certificates, the public CKKS context, global adapters


def atomic_write(path: str | Path, data: bytes, *, mode: int = SECRET_MODE) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a torn one.

    The temporary file is created with ``mode`` from its first byte on (a secret is never readable by
    others, even briefly), set to exactly ``mode`` whatever the umask, fsynced, renamed over ``path``,
    and the directory is fsynced. The default is owner-only; pass ``mode=SHARED_MODE`` for files
    meant to be read by others.
    """
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be a permission mode such as 0o600, got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")  # not secret: a unique name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may narrow the mode passed to open; make it exactly ``mode``
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def append_durably(path: Path, line: bytes, *, mode: int = SHARED_MODE) -> None:
    """Append ``line`` to ``path`` (created with ``mode``) and fsync it: a record that must survive a
    crash once written (security alerts, culprits). One ``write`` of an ``O_APPEND`` file, so lines
    from several writers never interleave. Raises ``OSError`` (a full disk) for the caller to report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_shared(path: Path, st: os.stat_result, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is accessible by group/others (mode {mode:o}); run chmod 600 {path}")


def check_secret_file(path: str | Path, what: str) -> None:
    """``ConfigError`` (naming the fix) unless ``path`` is a regular file only its owner can reach."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"missing {what} {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path} ({exc.strerror})") from None
    _refuse_shared(path, st, what)


def read_secret(path: str | Path, what: str) -> bytes:
    """The bytes of a secret file, checked on the open file itself (no window between check and read)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ConfigError(f"missing {what} {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        _refuse_shared(path, os.fstat(fh.fileno()), what)
        return fh.read()


def share_tree(root: str | Path) -> None:
    """Make a written artefact (a file, or a directory and all below it) readable by other users whatever
    the umask: directories 0755, files 0644. For what is meant to be shared (a converted model, an export),
    never for secrets."""
    root = Path(root)
    if not root.is_dir():
        os.chmod(root, SHARED_MODE)
        return
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), SHARED_MODE)
