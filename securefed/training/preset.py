"""Built-in tiny Llama-architecture model + byte-level BPE tokenizer, for tests, demo and benchmarks.

The model is built from a ``LlamaConfig`` with a fixed seed and saved with ``save_pretrained``; callers
then load it through :func:`securefed.training.model.load_model`, the same ``from_pretrained`` path a real
checkpoint uses. The tokenizer is a byte-level BPE trained (deterministically) on the standard-library
demo corpus. Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from securefed.errors import InvalidInput, ModelError

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
    seed: int = 1234


PRESETS: dict[PresetSize, PresetSpec] = {
    # Tiny: seconds on CPU for tests and the demo (~0.1 M parameters).
    PresetSize.TINY: PresetSpec(64, 128, 2, 4, 2, 512, 512),
    # Small: the benchmark size (hidden 256, 4 layers).
    PresetSize.SMALL: PresetSpec(256, 688, 4, 4, 4, 512, 1024),
}


def train_tokenizer(vocab_size: int = 512):
    """Byte-level BPE trained on the demo corpus; deterministic (sorted topics, fixed trainer settings)."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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


def build_tiny_model(directory: str | Path, size: str | PresetSize = PresetSize.TINY) -> Path:
    """Build the preset model + tokenizer into ``directory`` (created; overwritten) and return its path."""
    try:
        size = PresetSize(size)
    except ValueError:
        raise InvalidInput(f"preset size {size!r}: choose one of {[s.value for s in PresetSize]}") from None
    spec = PRESETS[size]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

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
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    (directory / PRESET_MARKER).write_text(json.dumps({"size": size.value, **asdict(spec)}, sort_keys=True))
    return directory
