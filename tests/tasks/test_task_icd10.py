"""The shipped ICD-10-CM task: non-IID by chapter, code-level held-out splits no member trains on,
deterministic, written offline by the CLI (and a rerun is a no-op)."""

from __future__ import annotations

import json

import pytest

from securefed.cli import main
from securefed.data.records import RecordKind, read_jsonl
from securefed.errors import ConfigError
from securefed.tasks import icd10


@pytest.fixture(scope="module")
def items():
    return icd10.tabular_items()


def test_items_are_the_billable_codes_with_their_phrases(items):
    codes = {it.code for it in items}
    assert len(codes) == 74_719 and len(items) > len(codes)  # descriptions plus inclusion terms
    asthma = [it for it in items if it.code == "J45.909"]
    assert {(it.term, it.source) for it in asthma} == {("Unspecified asthma, uncomplicated", "description"),
                                                       ("Asthma NOS", "inclusion term")}
    assert asthma[0].chapter == 10 and "J45" not in codes  # a category with children is not billable


def test_split_is_by_chapter_and_code_deterministic_and_held_out(items):
    s = icd10.split_items(items, 3, max_per_chapter=300)
    assert s == icd10.split_items(items, 3, max_per_chapter=300)
    chapters = [set(m.chapters) for m in s.members]
    assert set().union(*chapters) == set(range(1, 23)) and sum(map(len, chapters)) == 22  # each chapter once
    for m in s.members:
        assert {it.chapter for it in m.train} <= set(m.chapters) and {it.chapter for it in m.heldout} <= set(m.chapters)
    train = {it.code for m in s.members for it in m.train}
    member_held = {it.code for m in s.members for it in m.heldout}
    glob = {it.code for it in s.heldout}
    assert not train & glob and not train & member_held and not glob & member_held
    assert {it.chapter for it in s.heldout} == set(range(1, 23))  # the global split spans every specialty
    sizes = [sum(1 for it in m.train) for m in s.members]
    assert max(sizes) < 1.5 * min(sizes)  # chapters dealt largest first to the smallest member
    kept = {it.code for m in s.members for it in (*m.train, *m.heldout)} | glob
    by_category: dict[str, set[str]] = {}
    for it in items:
        by_category.setdefault(it.code[:3], set()).add(it.code)
    for cat in {c[:3] for c in kept}:  # capped chapters keep whole categories: siblings come along
        assert by_category[cat] <= kept
    other = icd10.split_items(items, 3, max_per_chapter=300, seed=1)
    assert {it.code for it in other.heldout} != glob


def test_records_and_options(items):
    it = next(i for i in items if i.code == "J45.909")
    rec = icd10.record(it)
    assert rec["messages"][-1] == {"role": "assistant", "content": "J45.909"}
    assert rec["messages"][1]["content"] == "ICD-10-CM code for: Unspecified asthma, uncomplicated"
    pool = icd10.chapter_codes(items)
    opts = icd10.options(it, pool, 4, seed=0)
    assert len(opts) == 4 and "J45.909" in opts and len({o[:3] for o in opts}) == 4
    assert all(o in pool[10] for o in opts) and opts == icd10.options(it, pool, 4, seed=0)
    with pytest.raises(ConfigError):
        icd10.split_items(items, 23)


def test_cli_writes_members_files_and_a_rerun_is_a_noop(tmp_path, capsys):
    out = tmp_path / "icd"
    args = ["task", "icd10", "--members", "2", "--out", str(out), "--max-per-chapter", "40", "--options", "3"]
    assert main(args) == 0
    manifest = json.loads((out / "task.json").read_text())
    assert manifest["licences"]["data"].startswith("public domain") and len(manifest["members"]) == 2
    held = read_jsonl(out / "heldout.jsonl")
    assert all(r.kind is RecordKind.CHAT and r.options[r.answer] == r.reference for r in held)
    assert sum(len(r.options) == 3 for r in held) > 0.9 * len(held)  # fewer only in a chapter of few categories
    train = read_jsonl(out / "member-1" / "train.jsonl")
    assert train and not any(r.options for r in train)
    assert {r.reference for r in train}.isdisjoint({r.reference for r in held})
    before = (out / "member-1" / "train.jsonl").read_bytes()
    capsys.readouterr()
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().err
    assert (out / "member-1" / "train.jsonl").read_bytes() == before
    assert main([*args[:-2], "--options", "0"]) == 2
    assert "not empty" in capsys.readouterr().err
