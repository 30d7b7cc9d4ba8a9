"""Held-out loss and perplexity on the answer tokens, and the task metric, as one result.

Records are rendered exactly as training renders them (:func:`securefed.training.data.examples_from_records`):
the loss is the mean cross-entropy of the tokens training learns (the assistant's turns), so the
perplexity here and the one a member logs mean the same thing. The task metric comes from greedy
generations of the last answer (:mod:`securefed.evaluation.generate`, fixed budget) or, for records
with ``options``, from the log-likelihood of each option as that answer (the option the model is most
likely to produce, end-of-turn token included, is its choice).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from securefed.data.records import Record, RecordKind, Turn
from securefed.errors import InvalidInput
from securefed.evaluation.generate import greedy_generate
from securefed.evaluation.metrics import choose_metric, score_generations
from securefed.training.data import evaluate, examples_from_records, trim_padding
from securefed.training.families import ModelKind
from securefed.training.loss import SequenceLoss

SAMPLES = 8  # generations kept in the result, for a reader to see what the model answers


@dataclass(frozen=True)
class TaskResult:
    records: int
    loss: float
    perplexity: float
    metric: str | None  # the task metric's name (None: text records only)
    task_metric: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    max_new_tokens: int = 0
    truncated: int = 0
    samples: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _with_answer(rec: Record, answer: str) -> Record:
    last = max(i for i, t in enumerate(rec.turns) if t.role == "assistant")
    turns = rec.turns[:last] + (Turn("assistant", answer),) + rec.turns[last + 1:]
    return dataclasses.replace(rec, turns=turns, options=(), answer=None)


def choice_accuracy(model, tokenizer, records: list[Record], *, kind: ModelKind, max_seq_len: int,
                    batch_size: int = 16, loss: SequenceLoss | None = None) -> float:
    """Share of multiple-choice records whose answer is the option the model gives the highest likelihood."""
    variants = [_with_answer(r, o) for r in records for o in r.options]
    data = examples_from_records(variants, tokenizer, max_seq_len, kind=kind).dataset
    device = next(model.parameters()).device
    loss = loss or SequenceLoss(model, kind)
    sums = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                b = trim_padding(data.batch(list(range(start, min(len(data), start + batch_size)))))
                total, _ = loss.token_sums(model, {k: v.to(device) for k, v in b.items()})
                sums += total.float().cpu().tolist()
    finally:
        model.train(was_training)
    right, at = 0, 0
    for r in records:
        nll = sums[at:at + len(r.options)]
        at += len(r.options)
        right += int(min(range(len(nll)), key=nll.__getitem__) == r.answer)
    return right / len(records)


def evaluate_records(model, tokenizer, records: list[Record], *, kind: ModelKind = ModelKind.CAUSAL,
                     max_seq_len: int = 256, max_new_tokens: int = 16, batch_size: int = 16, metric: str = "auto",
                     generate: bool = True, progress: Callable[[int], None] | None = None) -> TaskResult:
    """Loss/perplexity on the answer tokens of ``records`` and the task metric (see the module docstring)."""
    if not records:
        raise InvalidInput("no records to evaluate")
    t0 = time.perf_counter()
    data = examples_from_records(records, tokenizer, max_seq_len, kind=kind, source="evaluation data")
    seq_loss = SequenceLoss(model, kind)
    mean, ppl = evaluate(model, data.dataset, batch_size=batch_size, kind=kind, loss=seq_loss)
    answered = [(r, e) for r, e in zip(data.records, data.encoded) if r.kind is not RecordKind.TEXT]
    metrics: dict[str, float] = {}
    samples: list[dict[str, str]] = []
    name = None
    if answered:
        refs = [r.reference for r, _ in answered]
        with_options = [r for r, _ in answered if r.options]
        name = choose_metric(refs, bool(with_options) and len(with_options) == len(answered), metric)
        if generate:
            prompts = [e.prompt[-max_seq_len:] for _, e in answered]
            preds = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    seq2seq=kind is ModelKind.SEQ2SEQ, progress=progress)
            metrics.update(score_generations(preds, refs))
            samples = [{"reference": r, "generated": p} for r, p in zip(refs[:SAMPLES], preds[:SAMPLES])]
        if with_options:
            metrics["choice_accuracy"] = choice_accuracy(model, tokenizer, with_options, kind=kind,
                                                         max_seq_len=max_seq_len, batch_size=batch_size, loss=seq_loss)
        if name not in metrics:
            raise InvalidInput(f"metric {name!r} needs {'options in the records' if name == 'choice_accuracy' else 'generations'}")
    return TaskResult(records=len(records), loss=mean, perplexity=ppl if math.isfinite(ppl) else float("inf"),
                      metric=name, task_metric=metrics.get(name) if name else None, metrics=metrics,
                      max_new_tokens=max_new_tokens if metrics else 0, truncated=data.stats.truncated,
                      samples=samples, seconds=time.perf_counter() - t0)
