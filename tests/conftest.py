"""Shared test helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors"


def load_vectors(primitive: str, kind: str) -> list[dict]:
    """Read ``tests/vectors/<primitive>/<kind>.json`` (a JSON list of cases)."""
    return json.loads((VECTORS / primitive / f"{kind}.json").read_text())


def json_parametrize(primitive: str, kind: str):
    """Parametrize a test over the cases of one vector file, with readable ids."""
    cases = load_vectors(primitive, kind)
    ids = [str(c.get("id", i)) for i, c in enumerate(cases)]
    return pytest.mark.parametrize("vector", cases, ids=ids)


@pytest.fixture(autouse=True)
def _member_ledgers_stay_in_the_test(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member without ledger_dir keeps its ledgers under ~/.local/share (one per dataset, across its
    federations): in tests that is a fresh directory per test, never the real home, never shared."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """One tiny preset model directory per test session (built with save_pretrained, loaded the real way)."""
    from securefed.federation import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-model"))
