"""Versions of the libraries that change a member's numbers, and how a federation compares them.

torch (kernels, RNG), transformers (model code, which weights load), peft (LoRA layers), opacus
(per-sample gradients, clipping), bitsandbytes (4-/8-bit bases) and tenseal (CKKS encoding) each
change what a member computes. Every release a member makes records them (``DpEvent.library_versions``)
and the server's plan states the versions the federation expects; a member compares them by
major.minor: a patch release fixes bugs without changing the numbers a federation relies on (the
packaging convention these projects follow), a minor or major one may.

Read from package metadata only: nothing heavy is imported.
"""

from __future__ import annotations

import functools
from importlib import metadata

from packaging.version import InvalidVersion, Version

#: Distribution names, in the order reports list them.
NUMERICS_LIBRARIES = ("torch", "transformers", "peft", "opacus", "bitsandbytes", "tenseal")
ABSENT = "absent"


@functools.lru_cache(maxsize=None)
def version_of(dist: str) -> str:
    """The installed version, or ``"absent"``. Memoised: the code a process has loaded cannot change
    while it runs (an upgrade on disk is not what ran)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ABSENT


def installed() -> dict[str, str]:
    """{library: installed version} for every numerics library."""
    return {name: version_of(name) for name in NUMERICS_LIBRARIES}


def major_minor(version: str) -> str:
    """``"2.13.0+cpu"`` -> ``"2.13"``; a version that does not parse is compared whole."""
    try:
        v = Version(version)
    except InvalidVersion:
        return version
    return f"{v.major}.{v.minor}"


def mismatches(expected: dict[str, str], have: dict[str, str]) -> list[str]:
    """One ``"name have X, federation expects Y"`` per numerics library whose major.minor differs.

    Only libraries the federation names are compared (an older server names none); a library the
    member lacks is a mismatch only when the federation expects it installed."""
    out = []
    for name in NUMERICS_LIBRARIES:
        want = expected.get(name)
        if want is None:
            continue
        got = have.get(name, ABSENT)
        if major_minor(got) != major_minor(want):
            out.append(f"{name} {got} (federation expects {want})")
    return out
