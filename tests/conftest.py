"""Shared test helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors"
# Seconds each test file took in the last `make durations` run: the order the suite hands files out in.
DURATIONS = Path(__file__).parent / "durations.json"


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


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted by `securefed model get` once per test run, shared read-only by the
    xdist workers (the first to take the lock converts, ~25 s; the others wait and reuse it). The
    conversion itself is tested from scratch in tests/models/test_models_smollm2.py."""
    from filelock import FileLock

    from securefed.models.cli import get_model

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, not the user's
    out, done = shared / "smollm2-checkpoint", shared / "smollm2-checkpoint.done"
    with FileLock(str(shared / "smollm2-checkpoint.lock")):
        if not done.exists():
            get_model("smollm2", out, say=lambda _: None)
            done.touch()
    return out


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-durations", action="store_true",
                     help=f"write each test file's seconds to {DURATIONS.name} (the order files are run in)")


def _test_file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(trylast=True)  # after `-m` has deselected: the cost of a file is that of what runs of it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first. `--dist loadfile` hands whole files to the two workers in collection order
    (pyproject turns off xdist's own reordering by test count), so a long end-to-end file collected last
    ran alone at the end while the other worker idled (~70 s of a 344 s run); longest-first keeps both
    busy to the end. A file not yet measured counts as long, so a new slow file cannot end the run alone."""
    recorded = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    with_slow = {_test_file(it.nodeid) for it in items if it.get_closest_marker("slow")}
    costs = {f: c["seconds"] if f in with_slow else c["seconds"] - c["slow"] for f, c in recorded.items()}
    unknown = max(costs.values(), default=0.0)
    first_seen = {f: i for i, f in enumerate(dict.fromkeys(_test_file(it.nodeid) for it in items))}
    items.sort(key=lambda it: (-costs.get(_test_file(it.nodeid), unknown), first_seen[_test_file(it.nodeid)]))


_measured: dict[str, dict[str, float]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    cost = _measured.setdefault(_test_file(report.nodeid), {"seconds": 0.0, "slow": 0.0})
    cost["seconds"] += report.duration
    if "slow" in report.keywords:
        cost["slow"] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Only the controlling process (xdist workers have `workerinput`) sees every file's reports.
    if session.config.getoption("--record-durations") and not hasattr(session.config, "workerinput"):
        # A partial run updates the files it ran; files that no longer exist are dropped.
        recorded = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
        root = Path(session.config.rootpath)
        merged = {f: c for f, c in {**recorded, **_measured}.items() if (root / f).exists()}
        ordered = sorted(merged.items(), key=lambda kv: -kv[1]["seconds"])
        DURATIONS.write_text("{\n" + ",\n".join(
            f'"{f}": {{"seconds": {c["seconds"]:.2f}, "slow": {c["slow"]:.2f}}}' for f, c in ordered) + "\n}\n")
