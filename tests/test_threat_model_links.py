"""Every threat in threat_models/*.md cites tests that exist.

Each threat document carries a Markdown table ``| threat | mitigation | test id |``. A test id is a
pytest node id (``tests/x/test_y.py::test_z`` or ``tests/x/test_y.py::TestClass::test_z``, an optional
``[param]`` suffix allowed). This test parses the tables and checks, with ``ast`` (without importing or
running anything), that each named file exists and defines that test function. A threat that names a
test which was renamed or deleted is a claim nobody checks any more, so it fails here.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THREAT_DIR = ROOT / "threat_models"
DOCUMENTS = (
    "secure_aggregation.md",
    "ckks.md",
    "differential_privacy.md",
    "transport_identity.md",
    "durability.md",
)
NODE_ID = re.compile(r"`(tests/[^`\s]+?\.py::[^`\s]+)`")


def _split_row(line: str) -> list[str]:
    cells = line.strip().strip("|").split("|")
    return [c.strip() for c in cells]


def _is_separator(cells: list[str]) -> bool:
    return all(re.fullmatch(r":?-{3,}:?", c) for c in cells if c) and any(cells)


def parse_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Return (header, rows) for each pipe table in a Markdown text."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and _is_separator(_split_row(lines[i + 1])):
            header = [h.lower() for h in _split_row(lines[i])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


@cache
def _defined_tests(path: Path) -> frozenset[str]:
    """``name`` for module-level test functions and ``Class::name`` for test methods, via ast."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}::{sub.name}")
    return frozenset(names)


def check_node_id(node_id: str) -> str | None:
    """None if ``node_id`` names an existing, collectable test; else the reason it does not."""
    file_part, _, test_part = node_id.partition("::")
    test_part = test_part.split("[", 1)[0]  # a parametrize id does not change the function
    path = ROOT / file_part
    if not (path.name.startswith("test_") and path.suffix == ".py"):
        return f"{file_part} is not a test file pytest collects"
    if not path.is_file():
        return f"{file_part} does not exist"
    if not test_part.split("::")[-1].startswith("test"):
        return f"{test_part} is not a test function name"
    if test_part not in _defined_tests(path):
        return f"{file_part} defines no {test_part}"
    return None


def _threat_rows() -> list[tuple[str, list[str], list[str]]]:
    """(document, header, row) for each row of each table that has a 'test id' column."""
    out = []
    for doc in sorted(THREAT_DIR.glob("*.md")):
        for header, rows in parse_tables(doc.read_text()):
            if "test id" in header:
                out.extend((doc.name, header, row) for row in rows)
    return out


def test_every_surface_has_a_document_and_an_index():
    index = (THREAT_DIR / "README.md").read_text()
    for name in DOCUMENTS:
        assert (THREAT_DIR / name).is_file(), f"threat_models/{name} is missing"
        assert f"({name})" in index, f"threat_models/README.md does not link {name}"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_each_document_has_a_threat_table_and_says_what_is_not_defended(name):
    text = (THREAT_DIR / name).read_text()
    tables = [(h, rows) for h, rows in parse_tables(text) if "test id" in h]
    assert tables, f"{name} has no | threat | mitigation | test id | table"
    for header, rows in tables:
        assert header[:3] == ["threat", "mitigation", "test id"], f"{name}: header is {header}"
        assert rows, f"{name}: empty threat table"
    assert re.search(r"^#+ .*not defended", text, re.IGNORECASE | re.MULTILINE), (
        f"{name} has no 'Not defended' section"
    )


def test_every_cited_test_id_exists():
    problems = []
    cited = 0
    for doc, header, row in _threat_rows():
        col = header.index("test id")
        cell = row[col] if col < len(row) else ""
        ids = NODE_ID.findall(cell)
        if not ids:
            problems.append(f"{doc}: row {row[0]!r} cites no test id (write it as `tests/...py::test_x`)")
        for node_id in ids:
            cited += 1
            reason = check_node_id(node_id)
            if reason:
                problems.append(f"{doc}: {node_id}: {reason}")
    assert not problems, "\n".join(problems)
    assert cited > 0


def test_test_ids_anywhere_in_any_table_or_text_exist():
    # Ids cited outside the threat tables (prose, other tables) must exist too.
    problems = []
    for doc in sorted(THREAT_DIR.glob("*.md")):
        for node_id in NODE_ID.findall(doc.read_text()):
            reason = check_node_id(node_id)
            if reason:
                problems.append(f"{doc.name}: {node_id}: {reason}")
    assert not problems, "\n".join(problems)


def test_the_checker_itself_rejects_missing_files_and_functions():
    # The check must be able to fail: a missing file, a missing function and a non-test name.
    assert check_node_id("tests/test_threat_model_links.py::test_every_cited_test_id_exists") is None
    assert check_node_id("tests/nope/test_missing.py::test_x") is not None
    assert check_node_id("tests/test_threat_model_links.py::test_does_not_exist") is not None
    assert check_node_id("tests/test_threat_model_links.py::parse_tables") is not None
    table = parse_tables("| threat | mitigation | test id |\n|---|---|---|\n| a | b | `tests/t.py::test_a` |\n")
    assert table == [(["threat", "mitigation", "test id"], [["a", "b", "`tests/t.py::test_a`"]])]
