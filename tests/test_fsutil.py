from __future__ import annotations

import os
import stat

import pytest

from securefed.fsutil import atomic_write


@pytest.mark.parametrize("umask", [0o000, 0o077])
@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_atomic_write_sets_the_exact_mode_and_leaves_no_temp_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = tmp_path / "sub" / "f.bin"
        atomic_write(p, b"one", mode=mode)
        atomic_write(p, b"two", mode=mode)  # replaces
    finally:
        os.umask(old)
    assert p.read_bytes() == b"two"
    assert stat.S_IMODE(p.stat().st_mode) == mode
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]


def test_a_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write(p, b"old")
    with pytest.raises(TypeError):
        atomic_write(p, "not bytes")  # type: ignore[arg-type]
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]
