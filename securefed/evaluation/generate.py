"""Greedy generations with a fixed budget: deterministic for a given model, data and batch size.

Prompts are the token ids the training path renders (the conversation up to the answer, in the model's
own chat template), left-padded in batches for a causal model; decoding is greedy (no sampling, one
beam), stops at the tokenizer's end of sequence or after ``max_new_tokens``, and the generation config
shipped with the checkpoint (temperature, top-p, ...) is not used, so two runs give the same text.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from transformers import GenerationConfig


def _eos_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id}
    cfg = getattr(model, "generation_config", None)
    extra = getattr(cfg, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(x) for x in extra)
    return sorted(i for i in ids if i is not None)


def greedy_generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int = 16, batch_size: int = 16,
                    seq2seq: bool = False, progress: Callable[[int], None] | None = None) -> list[str]:
    """The greedy continuation of every prompt, decoded without special tokens."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(tokenizer, model)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                              eos_token_id=eos, pad_token_id=pad)
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            width = max(len(p) for p in batch)
            if seq2seq:  # the encoder reads right-padded input
                ids = [p + [pad] * (width - len(p)) for p in batch]
                mask = [[1] * len(p) + [0] * (width - len(p)) for p in batch]
            else:  # new tokens follow the last prompt token: pad on the left
                ids = [[pad] * (width - len(p)) + p for p in batch]
                mask = [[0] * (width - len(p)) + [1] * len(p) for p in batch]
            input_ids = torch.tensor(ids, dtype=torch.long, device=device)
            attention = torch.tensor(mask, dtype=torch.long, device=device)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # generation-config notices about unused sampling flags
                gen = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
            new = gen if seq2seq else gen[:, width:]
            out += [tokenizer.decode([t for t in row.tolist() if t != pad], skip_special_tokens=True) for row in new]
            if progress is not None:
                progress(len(batch))
    finally:
        model.train(was_training)
    return out
