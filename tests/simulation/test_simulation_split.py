"""The members' data: the demo corpus split by topic for any number of members, member JSONL files,
one JSONL split in file order, a held-out set no member trains on, and one-line refusals."""

from __future__ import annotations

import json

import pytest

from securefed.errors import ConfigError
from securefed.simulation.split import DataSource, build_split, source_from_paths
from securefed.training.model import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(sim_model):
    return load_tokenizer(sim_model)


def _rows(d):
    return {tuple(r) for r in d.input_ids.tolist()}


def test_the_demo_split_is_non_iid_equal_and_disjoint_from_the_heldout_set(tokenizer):
    split = build_split(DataSource("demo", 12, 32, seed=0, min_examples=8), tokenizer)
    assert len(set(split.sizes)) == 1 and split.sizes[0] >= 8
    members = [_rows(d) for d in split.members]
    assert all(not (a & b) for i, a in enumerate(members) for b in members[i + 1:])
    # Held-out topics are other topics (the corpus repeats one identical 32-token block across topics).
    assert len(_rows(split.heldout) & set().union(*members)) <= 1
    other = build_split(DataSource("demo", 12, 32, seed=1, min_examples=8), tokenizer)
    assert _rows(other.members[0]) != members[0]  # the seed deals other topics to member 1


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def test_member_files_and_one_file_split_in_order(tmp_path, tokenizer):
    a = _jsonl(tmp_path / "a.jsonl", [f"alpha record {i}" for i in range(5)])
    b = _jsonl(tmp_path / "b.jsonl", [f"beta record {i}" for i in range(7)])
    held = _jsonl(tmp_path / "held.jsonl", ["held out"] * 3)
    src = source_from_paths([a, b], members=None, heldout=held, max_seq_len=16, seed=0, min_examples=2)
    split = build_split(src, tokenizer)
    assert src.kind == "files" and split.sizes == (5, 7) and len(split.heldout) == 3
    one = _jsonl(tmp_path / "one.jsonl", [f"record number {i}" for i in range(40)])
    split = build_split(source_from_paths([one], members=4, heldout=None, max_seq_len=16, seed=0, min_examples=2),
                        tokenizer)
    assert split.sizes == (9, 9, 9, 9) and len(split.heldout) == 4  # 10% held out, the rest dealt in order


@pytest.mark.parametrize("paths, members, heldout, message", [
    (["a", "b"], None, None, "needs --heldout FILE"),
    (["a", "b"], 3, "held", "--members 3 but --data names 2 member files"),
    (["one"], None, None, "--members N is required"),
    (["one"], 60, None, "1 per member for 60 members, fewer than the 2"),
    ([], 4, "held", "--heldout goes with --data"),
])
def test_refusals_name_what_to_change(tmp_path, tokenizer, paths, members, heldout, message):
    files = {"a": _jsonl(tmp_path / "a.jsonl", ["x y z"] * 3), "b": _jsonl(tmp_path / "b.jsonl", ["u v"] * 3),
             "one": _jsonl(tmp_path / "one.jsonl", [f"r {i}" for i in range(100)]),
             "held": _jsonl(tmp_path / "held.jsonl", ["h"])}
    with pytest.raises(ConfigError, match=message):
        src = source_from_paths([files[p] for p in paths], members=members, heldout=files.get(heldout),
                                max_seq_len=16, seed=0, min_examples=2)
        build_split(src, tokenizer)
