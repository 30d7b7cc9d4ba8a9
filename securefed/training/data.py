"""Training data: JSONL files and the built-in demo corpus, tokenised into fixed-length examples.

One example = one sequence of ``max_seq_len`` tokens: the privacy unit of DP-SGD (one JSONL record, a
whole conversation for chat data; one block with packing or for the demo corpus). Every example has
``input_ids``, ``attention_mask`` and ``labels`` (``-100`` where no loss is taken: padding and, for
conversations, everything but the assistant's turns). Records are read and rendered by
:mod:`securefed.data`.

For an encoder-decoder (seq2seq) model the same records become (encoder input, decoder target) pairs:
an instruction record is instruction -> response; plain text (a ``{"text": ...}`` record, or a block of
the demo corpus) is its first half -> its continuation, so a seq2seq member learns to continue text
from the same tokens a causal member learns from. ``input_ids``/``attention_mask`` are then the
encoder's, ``labels`` the decoder's targets.

The demo corpus is ``pydoc_data.topics.topics`` (ships with every Python): whole topics are assigned to
clients by a hash of the topic name (non-IID by topic, deterministic), and some topics are held out for
evaluation.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pydoc_data.topics
from dataclasses import dataclass
from pathlib import Path

import torch

from securefed.data.encode import DEFAULT_TEMPLATE, Encoded, Encoder, pack
from securefed.data.records import Record, RecordKind, read_jsonl
from securefed.data.settings import DataSettings
from securefed.errors import InvalidInput
from securefed.training.families import ModelKind, model_kind
from securefed.training.loss import IGNORE_INDEX, SequenceLoss

log = logging.getLogger(__name__)



class TokenDataset:
    """Fixed-length tokenised examples as three ``[N, L]`` int64 tensors (a torch map-style dataset)."""

    def __init__(self, input_ids, attention_mask, labels) -> None:
        if not (input_ids.shape == attention_mask.shape == labels.shape) or input_ids.ndim != 2:
            raise InvalidInput("dataset tensors must all be [N, L] with the same shape")
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.labels = labels

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def __getitem__(self, i):
        return self.input_ids[i], self.attention_mask[i], self.labels[i]

    def batch(self, indices):
        """Rows ``indices`` (a list or 1-D tensor) as a dict ready for the model."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {
            "input_ids": self.input_ids[idx],
            "attention_mask": self.attention_mask[idx],
            "labels": self.labels[idx],
        }


def trim_padding(batch: dict) -> dict:
    """``batch`` without the padding columns every row has at its end (evaluation only: training keeps
    the fixed ``max_seq_len`` shape, so its step time does not depend on which records were sampled)."""
    width = max(1, int(batch["attention_mask"].sum(dim=1).max()))
    labelled = (batch["labels"] != IGNORE_INDEX).any(dim=0).nonzero()
    target = max(1, int(labelled.max()) + 1) if labelled.numel() else 1
    if batch["labels"].shape[1] == batch["input_ids"].shape[1] and target <= width:  # causal: one sequence
        return {k: v[:, :width] for k, v in batch.items()}
    return {"input_ids": batch["input_ids"][:, :width], "attention_mask": batch["attention_mask"][:, :width],
            "labels": batch["labels"][:, :target]}


def _stack(rows: list[tuple[list[int], list[int], list[int]]]) -> TokenDataset:
    if not rows:
        raise InvalidInput("dataset is empty after tokenisation; provide more text")
    return TokenDataset(
        torch.tensor([r[0] for r in rows], dtype=torch.long),
        torch.tensor([r[1] for r in rows], dtype=torch.long),
        torch.tensor([r[2] for r in rows], dtype=torch.long),
    )


def blocks_from_texts(texts: list[str], tokenizer, block_size: int, kind: ModelKind = ModelKind.CAUSAL) -> TokenDataset:
    """Concatenate ``texts`` (each ended by EOS) and cut the token stream into full blocks of ``block_size``.

    The tail shorter than a block is dropped so every example is the same length (and the same privacy unit).
    Seq2seq: each block's first half is the encoder input, its second half the target.
    """
    if block_size < 2 or (kind is ModelKind.SEQ2SEQ and block_size < 4):
        raise InvalidInput("block_size must be at least 2 (4 for a seq2seq model)")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    n = len(stream) // block_size
    rows = []
    half = block_size // 2
    for b in range(n):
        ids = stream[b * block_size : (b + 1) * block_size]
        if kind is ModelKind.SEQ2SEQ:
            rows.append((ids[:half], [1] * half, ids[half : 2 * half]))
        else:
            rows.append((ids, [1] * block_size, list(ids)))
    if not rows:
        raise InvalidInput(f"text has {len(stream)} tokens, fewer than one block of {block_size}; add text")
    return _stack(rows)


def _pad(ids: list[int], labels: list[int], length: int, pad_id: int) -> tuple[list[int], list[int], list[int]]:
    ids, labels = ids[:length], labels[:length]
    n = len(ids)
    return ids + [pad_id] * (length - n), [1] * n + [0] * (length - n), labels + [IGNORE_INDEX] * (length - n)


def _pad_pair(enc: list[int], target: list[int], length: int, pad_id: int) -> tuple[list[int], list[int], list[int]]:
    """Seq2seq: encoder ids (padded, masked) and decoder targets (padded with -100), each ``length`` long."""
    enc, target = enc[:length], target[:length]
    n = len(enc)
    return (enc + [pad_id] * (length - n), [1] * n + [0] * (length - n),
            target + [IGNORE_INDEX] * (length - len(target)))


@dataclass(frozen=True)
class LoadStats:
    """What loading a member's JSONL did to its records (logged, and shown by ``client --check``)."""

    records: int
    examples: int
    truncated: int = 0  # records cut to max_seq_len
    answer_lost: int = 0  # of those, left without any labelled token (they teach nothing)
    packed: int = 0  # text records packed into blocks
    longest: int = 0  # tokens of the longest record before truncation
    unit: str = "record"  # what one example is: "record" or, with packing, "token-block"

    def summary(self) -> str:
        parts = [f"{self.examples} training examples from {self.records} records"]
        if self.packed:
            parts.append(f"{self.packed} text records packed into blocks (unit of privacy: one block)")
        if self.truncated:
            lost = f", {self.answer_lost} of them with no answer left" if self.answer_lost else ""
            parts.append(f"{self.truncated} truncated to max_seq_len{lost}")
        parts.append(f"longest record {self.longest} tokens")
        return "; ".join(parts)


@dataclass(frozen=True)
class LoadedData:
    dataset: TokenDataset
    stats: LoadStats
    records: list[Record]  # the records behind the first len(encoded) examples (packed text is not among them)
    encoded: list[Encoded]  # their untruncated ids and generation prompts


def load_records(
    path: str | Path,
    tokenizer,
    max_seq_len: int,
    *,
    kind: ModelKind = ModelKind.CAUSAL,
    settings: DataSettings | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> LoadedData:
    """Read a member's JSONL file (chat, Alpaca, instruction/response or text records; see
    :mod:`securefed.data.records`) into fixed-length examples of ``max_seq_len`` tokens
    (:func:`examples_from_records`). Every refusal names the file and line."""
    return examples_from_records(read_jsonl(path), tokenizer, max_seq_len, kind=kind, settings=settings,
                                 template=template, source=str(path))


def examples_from_records(
    records: list[Record],
    tokenizer,
    max_seq_len: int,
    *,
    kind: ModelKind = ModelKind.CAUSAL,
    settings: DataSettings | None = None,
    template: str = DEFAULT_TEMPLATE,
    source: str = "records",
) -> LoadedData:
    """Records as examples: conversations rendered with the model's chat template and learned on the
    assistant turns only (:mod:`securefed.data.encode`), text learned in full. A record longer than
    ``max_seq_len`` is truncated and counted, or refused (``settings.long_records``); with
    ``settings.pack_text`` text records are packed into full blocks instead."""
    settings = settings or DataSettings()
    seq2seq = kind is ModelKind.SEQ2SEQ
    enc = Encoder(tokenizer, seq2seq=seq2seq, template=template)
    pad = tokenizer.pad_token_id
    rows, streams, encoded = [], [], []
    truncated = lost = longest = 0
    packing = settings.pack_text and not seq2seq
    for rec in records:
        e = enc.encode(rec)
        longest = max(longest, len(e.ids), len(e.labels) if seq2seq else 0)
        if packing and rec.kind is RecordKind.TEXT:
            streams.append(e.ids)
            continue
        encoded.append(e)
        fit = enc.fit(e, max_seq_len)
        if fit.truncated:
            if settings.long_records == "refuse":
                what = (f"the prompt alone is {len(e.prompt)} tokens, no room for the answer" if fit.answer_lost
                        else f"the record is {max(len(e.ids), len(e.labels))} tokens")
                raise InvalidInput(f"{rec.where}: {what} within max_seq_len={max_seq_len}; shorten it, raise "
                                   "max_seq_len, or set [data] long_records = \"truncate\"")
            truncated += 1
            lost += fit.answer_lost
        rows.append(_pad_pair(fit.ids, fit.labels, max_seq_len, pad) if seq2seq
                    else _pad(fit.ids, fit.labels, max_seq_len, pad))
    blocks = pack(streams, max_seq_len)
    rows += [_pad(b, list(b), max_seq_len, pad) for b in blocks]
    stats = LoadStats(records=len(records), examples=len(rows), truncated=truncated, answer_lost=lost,
                      packed=len(streams), longest=longest, unit="token-block" if streams else "record")
    if truncated:
        log.warning("%s: %d of %d records truncated to max_seq_len=%d (%d left with no answer); longest %d tokens",
                    source, truncated, len(records), max_seq_len, lost, longest)
    return LoadedData(_stack(rows), stats, [r for r in records if not (packing and r.kind is RecordKind.TEXT)],
                      encoded)


def load_jsonl(path: str | Path, tokenizer, max_seq_len: int, *, template: str = DEFAULT_TEMPLATE,
               kind: ModelKind = ModelKind.CAUSAL, settings: DataSettings | None = None) -> TokenDataset:
    """The examples of :func:`load_records` alone."""
    return load_records(path, tokenizer, max_seq_len, kind=kind, settings=settings, template=template).dataset


# ---------------------------------------------------------------------------------------------------------
# Demo corpus

def demo_corpus() -> dict[str, str]:
    """The standard library's ``pydoc_data.topics.topics``: topic name -> documentation text."""
    return dict(pydoc_data.topics.topics)


@dataclass(frozen=True)
class DemoSplit:
    """Topic names for each client (non-IID by topic) and for the held-out evaluation split."""

    clients: tuple[tuple[str, ...], ...]
    heldout: tuple[str, ...]


def _topic_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(("securefed-demo:" + name).encode()).digest()[:8], "big")  # not secret


def split_demo_corpus(n_clients: int, heldout_fraction: float = 0.1) -> DemoSplit:
    """Assign whole topics to ``n_clients`` clients and a held-out split, deterministically by name hash.

    Topics are ordered by their hash; the first ``ceil(heldout_fraction * T)`` are held out and the rest
    are dealt round-robin, so every client gets whole topics, sizes stay comparable and the split never
    depends on dict order or Python's randomised ``hash``.
    """
    topics = demo_corpus()
    if not 1 <= n_clients <= len(topics) // 2:
        raise InvalidInput(f"n_clients must be between 1 and {len(topics) // 2} for the demo corpus")
    if not 0 < heldout_fraction < 0.5:
        raise InvalidInput("heldout_fraction must be in (0, 0.5)")
    names = sorted(topics, key=lambda n: (_topic_hash(n), n))
    n_held = max(1, math.ceil(heldout_fraction * len(names)))
    held, rest = names[:n_held], names[n_held:]
    clients = tuple(tuple(sorted(rest[i::n_clients])) for i in range(n_clients))
    return DemoSplit(clients=clients, heldout=tuple(sorted(held)))


def demo_client_dataset(tokenizer, client: int, n_clients: int, block_size: int,
                        heldout_fraction: float = 0.1, kind: ModelKind = ModelKind.CAUSAL) -> TokenDataset:
    """Client ``client``'s (0-based) demo training set, as token blocks."""
    split = split_demo_corpus(n_clients, heldout_fraction)
    if not 0 <= client < n_clients:
        raise InvalidInput(f"client index {client} out of range 0..{n_clients - 1}")
    topics = demo_corpus()
    return blocks_from_texts([topics[t] for t in split.clients[client]], tokenizer, block_size, kind)


def demo_heldout_dataset(tokenizer, n_clients: int, block_size: int, heldout_fraction: float = 0.1,
                         kind: ModelKind = ModelKind.CAUSAL) -> TokenDataset:
    split = split_demo_corpus(n_clients, heldout_fraction)
    topics = demo_corpus()
    return blocks_from_texts([topics[t] for t in split.heldout], tokenizer, block_size, kind)


def evaluate(model, dataset: TokenDataset, *, batch_size: int = 16, max_examples: int | None = None,
             kind: ModelKind | None = None, loss: SequenceLoss | None = None) -> tuple[float, float]:
    """Token-level mean cross-entropy and perplexity of ``model`` on ``dataset`` (no gradients).

    Causal: of each next token; seq2seq: of the decoder's targets. Chunked over the sequence like the
    training loss, so evaluating never needs the full logits either."""
    n = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    if n == 0:
        raise InvalidInput("evaluation dataset is empty")
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            if loss is None:
                base = model.get_base_model() if hasattr(model, "get_base_model") else model
                loss = SequenceLoss(model, kind or model_kind(base.config))
            for start in range(0, n, batch_size):
                b = trim_padding(dataset.batch(list(range(start, min(n, start + batch_size)))))
                b = {k: v.to(device) for k, v in b.items()}
                sums, counts = loss.token_sums(model, b)
                total += float(sums.sum())
                count += int(counts.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise InvalidInput("evaluation dataset has no labelled tokens")
    mean = total / count
    return mean, math.exp(min(mean, 700.0))
