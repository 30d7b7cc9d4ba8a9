"""Built-in tiny Llama-architecture model + byte-level BPE tokenizer, for tests, demo and benchmarks.

The model is built from a ``LlamaConfig`` with a fixed seed and saved with ``save_pretrained``; callers
then load it through :func:`securefed.training.model.load_model`, the same ``from_pretrained`` path a real
checkpoint uses. The tokenizer is a byte-level BPE trained (deterministically) on the standard-library
demo corpus. Nothing is downloaded.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from securefed.errors import InvalidInput, ModelError
from securefed.training import hf_tying  # noqa: F401  (thread-safe weight tying, installed on import)
from securefed.training.data import blocks_from_texts, demo_corpus
from securefed.training.loss import per_sample_loss

PRESET_MARKER = "securefed_preset.json"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


class PresetSize(str, Enum):
    TINY = "tiny"
    SMALL = "small"


@dataclass(frozen=True)
class PresetSpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    pretrain_steps: int = 0
    seed: int = 1234


PRESETS: dict[PresetSize, PresetSpec] = {
    # Tiny: seconds on CPU for tests and the demo (~0.1 M parameters).
    # It is briefly pretrained on public text (stdlib docstrings) so that federated LoRA fine-tuning on the
    # demo corpus has a language model to adapt (held-out perplexity ~50 instead of ~vocab size).
    PresetSize.TINY: PresetSpec(64, 128, 2, 4, 2, 512, 512, pretrain_steps=150),
    # Small: the benchmark size (hidden 256, 4 layers).
    PresetSize.SMALL: PresetSpec(256, 688, 4, 4, 4, 512, 1024),
}


def train_tokenizer(vocab_size: int = 512):
    """Byte-level BPE trained on the demo corpus; deterministic (sorted topics, fixed trainer settings)."""
    topics = demo_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([topics[k] for k in sorted(topics)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=1 << 30,  # blocks are cut by us, not by the tokenizer
    )


def public_pretraining_texts(max_chars: int = 300_000) -> list[str]:
    """Docstrings of the standard library's top-level modules (sorted; pydoc_data excluded): public text
    disjoint from the demo corpus the clients train on."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for f in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    texts.append(doc)
                    total += len(doc)
                    if total >= max_chars:
                        return texts
    return texts


def _pretrain(model, tokenizer, steps: int, block: int = 64, batch: int = 16, seed: int = 0) -> None:
    """A short, deterministic, non-private pretraining pass on public text (single-threaded for determinism)."""
    texts = public_pretraining_texts()
    if not texts:  # a Python without its stdlib sources: keep the random base
        return
    data = blocks_from_texts(texts, tokenizer, block)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(seed)  # not secret: public pretraining order
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        model.train()
        for _ in range(steps):
            b = data.batch(torch.randint(0, len(data), (batch,), generator=gen))
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss = per_sample_loss(logits, b["labels"]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)


def build_tiny_model(directory: str | Path, size: str | PresetSize = PresetSize.TINY, *, pretrain: bool = True) -> Path:
    """Build the preset model + tokenizer into ``directory`` (created; overwritten) and return its path.

    ``pretrain=False`` skips the short public pretraining (random base weights; faster, for tests that
    only need shapes or gradients). Weights are deterministic for a given torch build and CPU; as with any
    checkpoint, every party must use the same built directory.
    """
    try:
        size = PresetSize(size)
    except ValueError:
        raise InvalidInput(f"preset size {size!r}: choose one of {[s.value for s in PresetSize]}") from None
    spec = PRESETS[size]
    hf_logging.disable_progress_bar()

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"{directory}: cannot create the preset directory ({exc.strerror})") from None
    tokenizer = train_tokenizer(spec.vocab_size)
    if len(tokenizer) > spec.vocab_size:
        raise ModelError(f"preset tokenizer has {len(tokenizer)} tokens > vocab {spec.vocab_size}")
    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # not secret: public base-model weights
        model = LlamaForCausalLM(config).to(torch.float32)
        if pretrain and spec.pretrain_steps:
            _pretrain(model, tokenizer, spec.pretrain_steps, seed=spec.seed)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    (directory / PRESET_MARKER).write_text(json.dumps({"size": size.value, "pretrained": bool(pretrain and spec.pretrain_steps), **asdict(spec)},
                                                    sort_keys=True))
    return directory
