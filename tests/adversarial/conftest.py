"""Fixtures for the adversarial tests that run a real member daemon: one tiny preset model per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from securefed.federation import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-model"))
