"""Per-sample loss for causal and seq2seq LMs, without a batch x seq x vocab float32 logits tensor.

DP-SGD clips each example's gradient, so the loss is per example: the mean token cross-entropy of
one sequence (causal: next token; seq2seq: the decoder's target given the encoder's input).

Computing it the obvious way (``model(...).logits`` then cross-entropy) holds the whole
``[B, S, V]`` logits in float32 plus its softmax for the backward pass: for a 151,936-token vocabulary
at batch 16 x 256 that is ~2.5 GB per copy, more than the rest of a 0.5B model's step. Instead the
output head's *input* (the final hidden states, ``[B, S, H]``) is captured by swapping the head for a
stub during the forward pass, and the head and the cross-entropy run on the labelled positions only
(for chat data, loss on the answers, a small share of the sequence), chunk by chunk, each chunk under
activation checkpointing, so at most one chunk's logits exist at a time, forward or backward. The few families that post-process the head's output (BART's
``final_logits_bias``, Gemma-2's soft-capping, Cohere's logit scale) get the same post-processing per
chunk; a probe at set-up compares the chunked loss with the model's own logits on a short input and
falls back to full logits (logged) if they differ, so an unknown family is slower, never wrong.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch.utils.checkpoint import checkpoint

from securefed.training.families import ModelKind

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Logits (float32) of one chunk, with its softmax and gradient, stay below this.
CHUNK_BYTES = 256 << 20


def per_sample_loss(logits, labels, *, shift: bool = True):
    """Mean token cross-entropy of each sequence from full logits: shape [B] (the reference path)."""
    if shift:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none",
    ).view(labels.shape)
    valid = (labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return ce.sum(dim=1) / valid


def shift_right(labels, start_id: int, pad_id: int):
    """Decoder inputs for seq2seq targets (what T5's and BART's own ``shift_right`` compute)."""
    out = labels.new_full(labels.shape, pad_id)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = start_id
    return out.masked_fill(out == IGNORE_INDEX, pad_id)


class _Capture(torch.nn.Module):
    """Stands in for the output head: keeps its input, returns a [..., 1] placeholder."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = None

    def forward(self, hidden):
        self.hidden = hidden
        return hidden.new_zeros((*hidden.shape[:-1], 1))


def _find_parent(root, target):
    for name, mod in root.named_modules():
        for child_name, child in mod.named_children():
            if child is target:
                return mod, child_name
    return None, None


class SequenceLoss:
    """The per-sample loss of one model (a peft model or the bare transformers model)."""

    def __init__(self, model, kind: ModelKind, *, chunk_bytes: int = CHUNK_BYTES, verify: bool = True) -> None:
        self.kind = kind
        self.base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = getattr(self.base, "config", None)  # a plain torch LM (logits out) has none: the causal defaults
        self.chunk_bytes = int(chunk_bytes)
        self.head = self.base.get_output_embeddings() if hasattr(self.base, "get_output_embeddings") else None
        self.parent, self.attr = _find_parent(self.base, self.head) if self.head is not None else (None, None)
        self.bias = getattr(self.base, "final_logits_bias", None)
        if not isinstance(self.bias, torch.Tensor):
            self.bias = None
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.logit_scale = getattr(cfg, "logit_scale", None)
        if kind is ModelKind.SEQ2SEQ:
            start = getattr(cfg, "decoder_start_token_id", None)
            pad = getattr(cfg, "pad_token_id", None)
            self.start_id = int(start if start is not None else pad if pad is not None else 0)
            self.pad_id = int(pad if pad is not None else 0)
        # A trainable head (LoRA on lm_head) would be recomputed under checkpointing with Opacus' hooks
        # attached: keep the plain path there.
        self.chunked = (self.parent is not None and isinstance(getattr(self.head, "weight", None), torch.Tensor)
                        and not any(p.requires_grad for p in self.head.parameters()))
        if self.chunked and verify:
            self.chunked = self._probe(model)

    # --- inputs ---------------------------------------------------------------------------------
    def inputs(self, batch: dict) -> dict:
        out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.kind is ModelKind.SEQ2SEQ:
            out["decoder_input_ids"] = shift_right(batch["labels"], self.start_id, self.pad_id)
        return out

    def _targets(self, labels):
        return labels[:, 1:] if self.kind is ModelKind.CAUSAL else labels

    # --- the loss -------------------------------------------------------------------------------
    def token_sums(self, module, batch: dict):
        """(sum of token cross-entropies [B], labelled tokens [B]) of ``batch`` through ``module``
        (the model, or the Opacus wrapper around it)."""
        targets = self._targets(batch["labels"])
        count = (targets != IGNORE_INDEX).sum(dim=1)
        if not self.chunked:
            logits = module(**self.inputs(batch)).logits
            if self.kind is ModelKind.CAUSAL:
                logits = logits[:, :-1, :]
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                reduction="none").view(targets.shape)
            return ce.sum(dim=1), count
        hidden = self._hidden(module, batch)
        if self.kind is ModelKind.CAUSAL:
            hidden = hidden[:, :-1, :]
        b = targets.shape[0]
        # Only the labelled positions go through the head: for chat data (loss on the answer only) that is
        # a small share of the sequence, and the head is a large part of a small model's step. Each kept
        # row still belongs to one example (index_add below), so per-sample gradients stay separate.
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        kept, wanted = hidden[rows, cols], targets[rows, cols]
        k = int(rows.shape[0])
        vocab = int(self.head.weight.shape[0])
        step = max(1, self.chunk_bytes // max(1, 3 * 4 * vocab))
        total = hidden.new_zeros(b, dtype=torch.float32)
        for i in range(0, k, step):
            part = (self._rows(kept[i:i + step], wanted[i:i + step]) if step >= k or not torch.is_grad_enabled()
                    else checkpoint(self._rows, kept[i:i + step], wanted[i:i + step], use_reentrant=False))
            total = total.index_add(0, rows[i:i + step], part)
        return total, count

    def __call__(self, module, batch: dict):
        """Mean token cross-entropy of each example: shape [B]."""
        total, count = self.token_sums(module, batch)
        return total / count.clamp(min=1)

    def _rows(self, hidden, targets):
        """Cross-entropy of each row of ``hidden`` [K, H] against ``targets`` [K], with the family's own
        post-processing of the head's output."""
        logits = self.head(hidden)
        if self.bias is not None:
            logits = logits + self.bias.to(logits.device, logits.dtype)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        logits = logits.float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.nn.functional.cross_entropy(logits, targets, reduction="none")

    @contextlib.contextmanager
    def _swapped(self):
        cap = _Capture()
        setattr(self.parent, self.attr, cap)
        if self.bias is not None:  # keeps the model's own "logits + bias" at [B, S, 1]
            self.base.final_logits_bias = self.bias.new_zeros((1, 1))
        try:
            yield cap
        finally:
            setattr(self.parent, self.attr, self.head)
            if self.bias is not None:
                self.base.final_logits_bias = self.bias

    def _hidden(self, module, batch):
        with self._swapped() as cap:
            module(**self.inputs(batch))
        if cap.hidden is None:
            raise RuntimeError("the model's forward pass did not call its output head")
        return cap.hidden

    def _probe(self, model) -> bool:
        """Chunked loss == loss from the model's own logits on a short input (else: full logits)."""
        vocab = int(self.head.weight.shape[0])
        n = 8
        ids = (torch.arange(2 * n).reshape(2, n) * 7 + 3) % max(2, vocab)
        device = self.head.weight.device
        batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                 "labels": ids.flip(1).to(device)}
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.chunked = False
                ref, _ = self.token_sums(model, batch)
                self.chunked = True
                got, _ = self.token_sums(model, batch)
        except (RuntimeError, TypeError, AttributeError, ValueError) as exc:
            log.warning("chunked loss unavailable for %s (%s): using full logits", type(self.base).__name__, exc)
            return False
        finally:
            model.train(was)
        tol = 1e-3 * max(1.0, float(ref.abs().max()))
        if not math.isfinite(float(got.sum())) or float((got - ref).abs().max()) > tol:
            log.warning("chunked loss differs from %s's own logits: using full logits", type(self.base).__name__)
            return False
        return True
