"""Files that hold secrets (issue 10 §6): written owner-only, refused when group or others can reach them.

The attack is a local one: another account on the member's host reads the federation's CKKS secret
context (which decrypts every member's update) or a key, because it was written or left world-readable.
Each refusal has its control: the same file at 0600 loads.
"""

from __future__ import annotations

import os
import stat

import pytest

from securefed import he
from securefed.cli import main
from securefed.client.ckks_session import MemberKey
from securefed.errors import ConfigError
from securefed.fsutil import SHARED_MODE, atomic_write, read_secret


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture()
def open_umask():
    old = os.umask(0)  # the most permissive umask: whatever the file gets, atomic_write chose
    yield
    os.umask(old)


def test_atomic_write_is_owner_only_by_default_and_honours_a_requested_mode(tmp_path, open_umask):
    atomic_write(tmp_path / "secret", b"k")
    atomic_write(tmp_path / "shared", b"c", mode=SHARED_MODE)
    atomic_write(tmp_path / "exact", b"x", mode=0o640)
    assert (_mode(tmp_path / "secret"), _mode(tmp_path / "shared"), _mode(tmp_path / "exact")) == (0o600, 0o644, 0o640)
    with pytest.raises(ValueError, match="permission mode"):
        atomic_write(tmp_path / "bad", b"x", mode=0o4777)


def test_ckks_init_writes_the_secret_context_0600_and_the_public_one_0644(tmp_path, open_umask):
    assert main(["ckks-init", "--dir", str(tmp_path)]) == 0
    assert _mode(tmp_path / "federation.secret.ctx") == 0o600
    assert _mode(tmp_path / "federation.public.ctx") == 0o644


@pytest.fixture(scope="module")
def secret_bytes() -> bytes:
    return he.generate_client_context(he.DEFAULT_PARAMS_NAME).serialize_secret()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_a_ckks_secret_context_readable_by_group_or_others_is_refused(tmp_path, secret_bytes, mode):
    path = tmp_path / "federation.secret.ctx"
    atomic_write(path, secret_bytes, mode=mode)
    with pytest.raises(ConfigError, match=f"accessible by group/others \\(mode {mode:o}\\); run chmod 600"):
        he.load_secret_context(path, he.DEFAULT_PARAMS_NAME)
    with pytest.raises(ConfigError, match="chmod 600"):
        MemberKey(path)  # the member daemon refuses at start-up, not at its first CKKS round
    os.chmod(path, 0o600)  # control: the same file, owner-only, loads
    assert he.load_secret_context(path, he.DEFAULT_PARAMS_NAME).params.name == he.DEFAULT_PARAMS_NAME
    MemberKey(path)


def test_a_secret_behind_a_symlink_or_missing_is_refused_in_one_line(tmp_path, secret_bytes):
    real = tmp_path / "real.ctx"
    atomic_write(real, secret_bytes)
    link = tmp_path / "link.ctx"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="cannot read CKKS secret context"):
        read_secret(link, "CKKS secret context")  # not followed: the check is on the file opened
    with pytest.raises(ConfigError, match="missing CKKS secret context"):
        he.load_secret_context(tmp_path / "absent.ctx", he.DEFAULT_PARAMS_NAME)
