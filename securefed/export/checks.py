"""Every exported artefact read back with the library that serves it, and compared with what it must equal.

* PEFT directory: ``PeftModel.from_pretrained`` on a fresh load of the base checkpoint; its logits must
  equal the federation's model's (same weights, same arithmetic).
* merged checkpoint: ``AutoModelForCausalLM.from_pretrained``; its logits must match base + adapter up to
  the rounding of the merge (and of the base's dtype).
* GGUF: transformers' GGUF loader (``from_pretrained(dir, gguf_file=...)``, through the ``gguf`` package,
  the same file llama.cpp reads); its tokenizer must encode the prompts identically and its greedy
  generations must be those of the merged model: all of them for f32, and they are counted for f16
  (half precision may flip a near tie, which is reported, not hidden).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from securefed.errors import ModelError
from securefed.models.gguf_import import probe_ids
from securefed.training.model import load_model, tie_head

PROMPTS = ("What is the capital of France?", "Name three primary colours.", "Write one sentence about the sea.",
           "What is 7 plus 5?")
NEW_TOKENS = 12


@dataclass(frozen=True)
class GenerationCheck:
    identical: int
    prompts: int
    max_abs_logit_diff: float


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def check_peft_dir(base_model_dir: Path, peft_dir: Path, ids: list[int], reference: torch.Tensor) -> float:
    base = load_model(base_model_dir).model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        served = PeftModel.from_pretrained(base, str(peft_dir)).eval()
    diff = float((logits(served, ids) - reference).abs().max())
    if diff > 1e-5 * max(1.0, float(reference.abs().max())):
        raise ModelError(f"{peft_dir}: PeftModel.from_pretrained gives logits {diff:.3g} away from the federation's "
                         "model; the export is wrong, do not serve it")
    return diff


def check_merged(merged_dir: Path, ids: list[int], reference: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        served = AutoModelForCausalLM.from_pretrained(str(merged_dir), local_files_only=True,
                                                      dtype=torch.float32).eval()
    diff = float((logits(served, ids) - reference).abs().max())
    # Merging adds B A into W in float32 (then the base's dtype): rounding, nothing more.
    bf = served.config.dtype in (torch.bfloat16, torch.float16) if isinstance(served.config.dtype, torch.dtype) else False
    tol = (5e-2 if bf else 1e-3) * max(1.0, float(reference.abs().max()))
    if diff > tol:
        raise ModelError(f"{merged_dir}: the merged checkpoint's logits are {diff:.3g} away from base + adapter; "
                         "the export is wrong, do not serve it")
    return diff


def prompt_ids(tokenizer) -> list[list[int]]:
    out = []
    for p in PROMPTS:
        if getattr(tokenizer, "chat_template", None):
            out.append(list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                          tokenize=True, return_dict=False)))
        else:
            out.append(tokenizer(p)["input_ids"])
    return out


def greedy(model, ids: list[int], pad_id: int | None) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad_id)
    return out[0, len(ids):].tolist()


def check_gguf(path: Path, merged_model, tokenizer, *, exact: bool) -> GenerationCheck:
    """Read ``path`` back with transformers' GGUF loader and compare greedy generations with ``merged_model``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            served = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                          local_files_only=True).eval()
            served_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
            tie_head(served, served.config)  # a GGUF without output.weight is tied; transformers may not tie it
        except Exception as exc:  # noqa: BLE001 - whatever the loader raises, the file is not servable
            raise ModelError(f"{path}: transformers' GGUF loader cannot read the exported file "
                             f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    prompts = prompt_ids(tokenizer)
    if prompt_ids(served_tok) != prompts or probe_ids(served_tok) != probe_ids(tokenizer):
        raise ModelError(f"{path}: the GGUF's tokenizer encodes the prompts differently from the model's")
    reference = merged_model.float().eval()
    diff = float((logits(served, probe_ids(tokenizer)) - logits(reference, probe_ids(tokenizer))).abs().max())
    pad = tokenizer.pad_token_id
    same = sum(greedy(served, ids, pad) == greedy(reference, ids, pad) for ids in prompts)
    if exact and same != len(prompts):
        raise ModelError(f"{path}: greedy generations from the GGUF differ from the merged model's on "
                         f"{len(prompts) - same} of {len(prompts)} prompts; do not serve it")
    return GenerationCheck(same, len(prompts), diff)
