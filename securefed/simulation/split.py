"""The simulated members' data: a non-IID split of the shipped demo corpus or of the user's JSONL, and a
held-out set no member trains on.

Three sources (``DataSource.kind``):

* ``demo``: Python's own ``pydoc_data`` topics. The held-out topics are the demo's own
  (``training.data.split_demo_corpus``); every other topic is cut into token blocks, the topics are put in a
  seeded order and the block sequence is dealt into ``members`` equal contiguous shards, so a member holds
  one or a few whole topics: non-IID by topic, as the demo's three members are, for any number of members.
* ``files``: one JSONL file per member (``training.data.load_jsonl``: text or instruction records), already
  split the way their owner split them (by category, chapter, site); the held-out file is given apart.
* ``file``: one JSONL file: a seeded ``heldout_fraction`` of its records is held out, and the rest, in file
  order, is dealt into equal contiguous shards (a file grouped by topic gives a non-IID split).

Equal shards give every member the same dataset size, so members share one sampling rate and one noise
calibration. Too little data to give every member ``min_examples`` is a ``ConfigError`` naming what to
lower. The split is a pure function of the source, the tokenizer and the seed, so every worker process
computes the same one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from securefed.errors import ConfigError, InvalidInput
from securefed.training.data import (
    TokenDataset,
    blocks_from_texts,
    demo_corpus,
    load_jsonl,
    split_demo_corpus,
)
from securefed.training.families import ModelKind

HELDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class DataSource:
    """Where the members' data comes from (small and picklable: every worker rebuilds the split from it)."""

    kind: Literal["demo", "files", "file"]
    members: int
    max_seq_len: int
    seed: int = 0
    paths: tuple[str, ...] = ()
    heldout: str | None = None
    min_examples: int = 1
    heldout_fraction: float = HELDOUT_FRACTION

    def describe(self) -> str:
        if self.kind == "demo":
            return "the shipped demo corpus (pydoc_data topics), split by topic"
        if self.kind == "files":
            return f"{len(self.paths)} member files"
        return f"{self.paths[0]}, split in file order"


@dataclass(frozen=True)
class MemberSplit:
    members: tuple[TokenDataset, ...]
    heldout: TokenDataset

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(d) for d in self.members)


def source_from_paths(paths: list[str], *, members: int | None, heldout: str | None, max_seq_len: int, seed: int,
                      min_examples: int) -> DataSource:
    """A ``DataSource`` from the command line's ``--data`` (nothing: the demo corpus; a directory or several
    files: one member each; one file: split) and ``--heldout``."""
    if not paths:
        if heldout:
            raise ConfigError("--heldout goes with --data (the demo corpus holds out its own topics)")
        return DataSource("demo", _members(members), max_seq_len, seed, min_examples=min_examples)
    files: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.glob("*.jsonl") if not heldout or f.resolve() != Path(heldout).resolve())
            if not found:
                raise ConfigError(f"{p}: no *.jsonl member files in this directory")
            files += found
        elif p.is_file():
            files.append(str(p))
        else:
            raise ConfigError(f"{p}: no such file or directory (--data takes JSONL files or a directory of them)")
    if heldout is not None and not Path(heldout).is_file():
        raise ConfigError(f"{heldout}: held-out file not found (--heldout)")
    if len(files) == 1:
        return DataSource("file", _members(members), max_seq_len, seed, (files[0],), heldout, min_examples)
    if members is not None and members != len(files):
        raise ConfigError(f"--members {members} but --data names {len(files)} member files (one per member); "
                          "drop --members or pass as many files")
    if heldout is None:
        raise ConfigError("--data with one file per member needs --heldout FILE: a JSONL no member trains on")
    return DataSource("files", len(files), max_seq_len, seed, tuple(files), heldout, min_examples)


def _members(members: int | None) -> int:
    if members is None:
        raise ConfigError("--members N is required unless --data gives one file per member")
    return members


def build_split(source: DataSource, tokenizer, kind: ModelKind = ModelKind.CAUSAL) -> MemberSplit:
    """Every member's training set and the held-out set (``ConfigError`` if the data is too small to split)."""
    if source.members < 1:
        raise ConfigError("--members must be at least 1")
    if source.kind == "demo":
        split = split_demo_corpus(1, source.heldout_fraction)
        topics = demo_corpus()
        order = list(split.clients[0])
        random.Random(source.seed).shuffle(order)  # not secret: which member holds which topics
        pooled = _concat([b for t in order if (b := _blocks(topics[t], tokenizer, source.max_seq_len, kind))])
        heldout = blocks_from_texts([topics[t] for t in split.heldout], tokenizer, source.max_seq_len, kind)
        what = f"the demo corpus gives {len(pooled)} training examples of {source.max_seq_len} tokens"
        return MemberSplit(_shards(pooled, source, what), heldout)
    if source.kind == "files":
        members = tuple(load_jsonl(p, tokenizer, source.max_seq_len, kind=kind) for p in source.paths)
        for path, d in zip(source.paths, members):
            if len(d) < source.min_examples:
                raise ConfigError(f"{path}: {len(d)} examples, fewer than the {source.min_examples} a member needs "
                                  "(one expected batch); add records or lower --batch-size")
        return MemberSplit(members, load_jsonl(source.heldout, tokenizer, source.max_seq_len, kind=kind))
    pooled = load_jsonl(source.paths[0], tokenizer, source.max_seq_len, kind=kind)
    if source.heldout is not None:
        heldout = load_jsonl(source.heldout, tokenizer, source.max_seq_len, kind=kind)
        train = pooled
    else:
        n_held = max(1, math.ceil(source.heldout_fraction * len(pooled)))
        if len(pooled) < n_held + 1:
            raise ConfigError(f"{source.paths[0]}: {len(pooled)} records are too few to hold some out; add records")
        held_idx = sorted(random.Random(source.seed).sample(range(len(pooled)), n_held))  # not secret
        held_set = set(held_idx)
        heldout = _take(pooled, held_idx)
        train = _take(pooled, [i for i in range(len(pooled)) if i not in held_set])
    what = f"{source.paths[0]} gives {len(train)} training records"
    return MemberSplit(_shards(train, source, what), heldout)


def _shards(pooled: TokenDataset, source: DataSource, what: str) -> tuple[TokenDataset, ...]:
    per = len(pooled) // source.members
    if per < max(1, source.min_examples):
        raise ConfigError(
            f"{what}: {per} per member for {source.members} members, fewer than the {source.min_examples} a member "
            "needs (one expected batch); lower --members or --batch-size, or give more data"
        )
    return tuple(_take(pooled, range(i * per, (i + 1) * per)) for i in range(source.members))


def _blocks(text: str, tokenizer, block: int, kind: ModelKind) -> TokenDataset | None:
    """A topic's whole blocks (None for a topic shorter than one block: it holds no example)."""
    try:
        return blocks_from_texts([text], tokenizer, block, kind)
    except InvalidInput:
        return None


def _take(data: TokenDataset, rows) -> TokenDataset:
    b = data.batch(list(rows))
    return TokenDataset(b["input_ids"], b["attention_mask"], b["labels"])


def _concat(parts: list[TokenDataset]) -> TokenDataset:
    return TokenDataset(torch.cat([p.input_ids for p in parts]), torch.cat([p.attention_mask for p in parts]),
                        torch.cat([p.labels for p in parts]))
