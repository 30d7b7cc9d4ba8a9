"""Training data: JSONL files and the built-in demo corpus, tokenised into fixed-length examples.

One example = one sequence of ``max_seq_len`` tokens: the privacy unit of DP-SGD. Every example has
``input_ids``, ``attention_mask`` and ``labels`` (``-100`` where no loss is taken: padding and, for
instruction data, the prompt).

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
import json
import math
import pydoc_data.topics
from dataclasses import dataclass
from pathlib import Path

import torch

from securefed.errors import InvalidInput
from securefed.training.families import ModelKind, model_kind
from securefed.training.loss import IGNORE_INDEX, SequenceLoss

DEFAULT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


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


def load_jsonl(
    path: str | Path,
    tokenizer,
    max_seq_len: int,
    *,
    template: str = DEFAULT_TEMPLATE,
    kind: ModelKind = ModelKind.CAUSAL,
) -> TokenDataset:
    """Read a JSONL file of ``{"text": ...}`` or ``{"instruction": ..., "response": ...}`` records.

    Text records are learned in full; instruction records take loss only on the response tokens (the
    prompt, formatted by ``template``, gets label -100). Each record is one example, truncated/padded to
    ``max_seq_len``. A blank or malformed line raises :class:`InvalidInput` naming the line number.
    Seq2seq (``kind``): text -> (first half, continuation); instruction -> (instruction, response), the
    encoder reading the bare instruction (no template) and each side up to ``max_seq_len`` tokens.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: data file not found") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read data file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: data file is not UTF-8") from None
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    rows = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not make an empty record
    for lineno, line in enumerate(lines, start=1):
        where = f"{path}:{lineno}"
        if not line.strip():
            raise InvalidInput(f"{where}: empty line; remove it (one JSON object per line)")
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: invalid JSON ({exc.msg}); one JSON object per line") from None
        if not isinstance(rec, dict):
            raise InvalidInput(f"{where}: expected a JSON object with 'text' or 'instruction'/'response'")
        if "text" in rec and set(rec) <= {"text"}:
            if not isinstance(rec["text"], str) or not rec["text"].strip():
                raise InvalidInput(f"{where}: 'text' must be a non-empty string")
            ids = tokenizer(rec["text"], add_special_tokens=False, verbose=False)["input_ids"]
            if eos is not None:
                ids = ids + [eos]
            if kind is ModelKind.SEQ2SEQ:
                if len(ids) < 2:
                    raise InvalidInput(f"{where}: text too short to split into input and continuation")
                half = len(ids) // 2
                rows.append(_pad_pair(ids[:half], ids[half:], max_seq_len, pad))
                continue
            labels = list(ids)
        elif set(rec) == {"instruction", "response"}:
            ins, resp = rec["instruction"], rec["response"]
            if not isinstance(ins, str) or not isinstance(resp, str) or not resp.strip():
                raise InvalidInput(f"{where}: 'instruction' and 'response' must be strings (response non-empty)")
            r_ids = tokenizer(resp, add_special_tokens=False)["input_ids"]
            if eos is not None:
                r_ids = r_ids + [eos]
            if kind is ModelKind.SEQ2SEQ:
                e_ids = tokenizer(ins, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
                rows.append(_pad_pair(e_ids, r_ids, max_seq_len, pad))
                continue
            try:
                prompt = template.format(instruction=ins)
            except (KeyError, IndexError, ValueError):
                raise InvalidInput("prompt template must contain only the {instruction} placeholder") from None
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(p_ids) >= max_seq_len:
                raise InvalidInput(
                    f"{where}: prompt is {len(p_ids)} tokens, no room for the response within "
                    f"max_seq_len={max_seq_len}; shorten it or raise max_seq_len"
                )
            ids = p_ids + r_ids
            labels = [IGNORE_INDEX] * len(p_ids) + r_ids
        else:
            raise InvalidInput(
                f"{where}: expected keys 'text' or 'instruction'+'response', got {sorted(rec)}"
            )
        rows.append(_pad(ids, labels, max_seq_len, pad))
    if not rows:
        raise InvalidInput(f"{path}: no records; add JSON lines")
    return _stack(rows)


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
                b = dataset.batch(list(range(start, min(n, start + batch_size))))
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
