"""A Llama-architecture transformers model written as a GGUF file (f16 or f32), with the ``gguf`` package's
writer, laid out as llama.cpp's own ``convert_hf_to_gguf.py`` lays it out, so llama.cpp, Ollama and
transformers' GGUF loader read it.

What llama.cpp expects of a Llama file and we therefore do: tensor names from ``gguf``'s name map
(``blk.N.attn_q`` ...); the query and key projections permuted to llama.cpp's rotary layout (the
inverse of what transformers' loader undoes); 1-D tensors (norms) kept float32; no ``output.weight``
when the head is tied to the embedding; the byte-level BPE vocabulary (``tokenizer.ggml.model =
"gpt2"``) with its merges, token types (special added tokens CONTROL, other added tokens
USER_DEFINED, unused ids padded), special token ids and the chat template. Refused with one line:
another architecture, rope scaling, attention or MLP biases, a SentencePiece or other non-byte-level
tokenizer - each would need more than this writer knows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import torch

from securefed.errors import ModelError

FTYPES = {"f16": (gguf.LlamaFileType.MOSTLY_F16, np.float16), "f32": (gguf.LlamaFileType.ALL_F32, np.float32)}


def _rope(config) -> tuple[float, str]:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        kind = scaling.get("rope_type", scaling.get("type"))
    return float(theta), str(kind)


def check_exportable(model) -> None:
    """One-line ``ModelError`` unless ``model`` is a plain Llama this writer lays out exactly."""
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ModelError(f"GGUF export supports the Llama architecture; this model is {cfg.model_type!r} "
                         "(export --merge gives a transformers checkpoint; llama.cpp's convert_hf_to_gguf.py takes it)")
    _, kind = _rope(cfg)
    if kind != "default":
        raise ModelError(f"GGUF export: rope scaling {kind!r} is not written by securefed yet; use llama.cpp's "
                         "convert_hf_to_gguf.py on the --merge checkpoint")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ModelError("GGUF export: Llama models with attention or MLP biases are not supported; use llama.cpp's "
                         "convert_hf_to_gguf.py on the --merge checkpoint")


def permute_for_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout of a query/key weight (``convert_hf_to_gguf.LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges) of a byte-level BPE tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast (tokenizers) tokenizer saved with the model")
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise ModelError(f"GGUF export supports byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2); this one is "
                         f"{model.get('type')!r}; use llama.cpp's convert_hf_to_gguf.py on the --merge checkpoint")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {a["content"]: bool(a.get("special")) for a in spec.get("added_tokens") or []}
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL if added.get(tok) else
                         gguf.TokenType.USER_DEFINED if tok in added else gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types], merges


def write_gguf(model, tokenizer, path: str | Path, *, ftype: str = "f16", name: str = "model",
               tokenizer_pre: str = "default") -> Path:
    """Write ``model`` (plain Llama, any float dtype) and ``tokenizer`` to ``path``; returns it."""
    check_exportable(model)
    if ftype not in FTYPES:
        raise ModelError(f"GGUF type {ftype!r}: choose one of {sorted(FTYPES)}")
    file_type, np_type = FTYPES[ftype]
    cfg = model.config
    n_layers, n_head, n_kv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    theta, _ = _rope(cfg)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(file_type)
    _add_tokenizer(w, tokenizer, cfg, tokenizer_pre)
    _add_tensors(w, model, np_type, n_layers, n_head, n_kv)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _add_tokenizer(w, tokenizer, cfg, pre: str) -> None:
    tokens, types, merges = _vocab(tokenizer, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for tok_id, add in ((tokenizer.bos_token_id, w.add_bos_token_id), (tokenizer.eos_token_id, w.add_eos_token_id),
                        (tokenizer.unk_token_id, w.add_unk_token_id), (tokenizer.pad_token_id, w.add_pad_token_id)):
        if tok_id is not None:
            add(int(tok_id))
    w.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)


def _add_tensors(w, model, np_type, n_layers: int, n_head: int, n_kv: int) -> None:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for hf_name, t in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd for a tied head
        base, suffix = hf_name.rsplit(".", 1)
        mapped = names.get_name(base)
        if mapped is None:
            raise ModelError(f"GGUF export: no GGUF name for the tensor {hf_name}")
        data = t.detach().to(torch.float32).cpu().numpy()
        if base.endswith("self_attn.q_proj"):
            data = permute_for_llama_cpp(data, n_head)
        elif base.endswith("self_attn.k_proj"):
            data = permute_for_llama_cpp(data, n_kv)
        w.add_tensor(f"{mapped}.{suffix}", np.ascontiguousarray(data.astype(np_type if data.ndim > 1 else np.float32)))
