"""Load a base model (causal or seq2seq) and its tokenizer from a local directory; attach LoRA.

Any Hugging Face checkpoint directory of a family transformers ships works (the tiny preset is saved
the same way). Nothing is ever downloaded: the hub is switched offline before transformers is
imported and every call passes ``local_files_only=True``. Refused with one line: weights that do not
cover the model (a bare ``AutoModel`` save without its head, a missing or truncated shard) - they
would load with a randomly initialised head, a different model on every member - and code shipped
with the checkpoint unless ``trust_remote_code`` is set.

The member picks dtype, device and an optional 4-/8-bit base (bitsandbytes) in its ``[model]``
settings; the LoRA parameters stay float32 whatever the base. Their initial values are a pure
function of names, shapes and the public seed (:func:`securefed.training.adapter.init_adapter`), so
the server can build the round-0 adapter from the config alone on torch's meta device
(:func:`layout_for_config`).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, BitsAndBytesConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging as hf_logging

from securefed.errors import ModelError
from securefed.training.adapter import adapter_layout, init_adapter
from securefed.training.config import LoraSettings, ModelSettings
from securefed.training.families import ModelKind, model_kind, peft_task_type, resolve_targets
from securefed.training.fingerprint import weight_files

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class LoadedModel:
    """A base model (with LoRA attached when requested), its tokenizer, and how it was loaded."""

    model: Any
    tokenizer: Any
    model_dir: Path
    lora: LoraSettings | None
    kind: ModelKind = ModelKind.CAUSAL
    device: str = "cpu"
    dtype: str = "fp32"
    quantization: str = "none"


def dtype_name(dtype) -> str:
    return _NAMES.get(dtype, str(dtype))


def _check_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: model directory not found; set the base model path to a local checkpoint")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: no config.json; point the base model path at a save_pretrained directory")


def load_tokenizer(model_dir: str | Path):
    model_dir = Path(model_dir)
    _check_dir(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError/JSON errors
        raise ModelError(
            f"{model_dir}: cannot load the tokenizer ({exc.__class__.__name__}); the directory needs "
            "tokenizer.json/tokenizer_config.json saved with save_pretrained"
        ) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"{model_dir}: tokenizer has neither a pad nor an eos token; add a pad_token")
        tok.pad_token = tok.eos_token
    return tok


def _trust(model_dir: Path, trust_remote_code: bool) -> bool:
    """Whether loading needs the checkpoint's own code; refuses it unless the party said yes."""
    try:
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ModelError(f"{model_dir}/config.json: cannot parse model config") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    known = isinstance(model_type, str) and model_type in CONFIG_MAPPING
    custom = isinstance(raw, dict) and "auto_map" in raw
    if known:
        if custom:
            log.info("%s: config.json names custom code (auto_map); using transformers' own %s", model_dir, model_type)
        return False
    if not custom:
        raise ModelError(f"{model_dir}/config.json: model_type {model_type!r} is not one transformers knows; "
                         "use a checkpoint of a supported family")
    if not trust_remote_code:
        raise ModelError(f"{model_dir}: this model ships its own Python code (auto_map, model_type {model_type!r}); "
                         "refused: set [model] trust_remote_code = true only if you have reviewed that code")
    _refuse_code_from_elsewhere(model_dir, raw["auto_map"])
    log.warning("%s: running the model's own code (trust_remote_code = true)", model_dir)
    return True


def _refuse_code_from_elsewhere(model_dir: Path, auto_map: object) -> None:
    """Trusted code runs only from the checkpoint directory itself: an ``auto_map`` entry naming another
    repository (``owner/repo--module.Class``) is code transformers would fetch from a hub, and a module
    missing here would be looked up there too. Refused before transformers sees either."""
    entries = auto_map.values() if isinstance(auto_map, dict) else []
    refs = [r for e in entries for r in (e if isinstance(e, (list, tuple)) else [e]) if isinstance(r, str)]
    for ref in refs:
        module = ref.rsplit(".", 1)[0]
        if "--" in ref or "/" in module or not (model_dir / f"{module}.py").is_file():
            raise ModelError(f"{model_dir}/config.json: auto_map names {ref!r}, code that is not a file in this "
                             "directory; securefed never fetches code: put the module beside config.json")


def load_config(model_dir: str | Path, trust_remote_code: bool = False):
    model_dir = Path(model_dir)
    _check_dir(model_dir)
    trust = _trust(model_dir, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust), trust
    except Exception as exc:
        raise ModelError(f"{model_dir}/config.json: cannot parse model config ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None


def tie_head(model, config) -> bool:
    """Tie the output head to the input embeddings when the config says so; True if they are tied.

    transformers ties them while building the model; overlapping loads in threads used to switch that
    off for the whole process (``hf_tying`` fixes the cause). The loader and the memory planner still
    check, as a model built by code that bypasses ``from_pretrained`` may not be tied."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    if not getattr(cfg, "tie_word_embeddings", False) or head is None or emb is None:
        return False
    if head.weight is not emb.weight:
        head.weight = emb.weight
    return True


def auto_class(kind: ModelKind):
    return AutoModelForSeq2SeqLM if kind is ModelKind.SEQ2SEQ else AutoModelForCausalLM


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto': the first CUDA device, else MPS, else the CPU; an explicit device must exist."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if spec == "auto":
        return torch.device("cuda:0" if cuda else "mps" if mps else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not cuda:
            raise ModelError(f"[model] device = {spec!r}: no CUDA device is visible; use 'cpu' or 'auto'")
        idx = dev.index or 0
        if idx >= torch.cuda.device_count():
            raise ModelError(f"[model] device = {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device(f"cuda:{idx}")
    if dev.type == "mps" and not mps:
        raise ModelError(f"[model] device = {spec!r}: MPS is not available here; use 'cpu' or 'auto'")
    return dev


def checkpoint_dtype(config) -> str | None:
    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(d, torch.dtype):
        return _NAMES.get(d)
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(str(d).replace("torch.", "")) if d else None


def resolve_dtype(spec: str, config, device: torch.device) -> torch.dtype:
    """'auto': the checkpoint's dtype where the device computes in it, else float32."""
    if spec != "auto":
        dt = _DTYPES[spec]
        if dt is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ModelError(f"[model] dtype = 'bf16': {torch.cuda.get_device_name(device)} has no bf16; use 'fp16'")
        return dt
    ckpt = checkpoint_dtype(config)
    if ckpt == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if ckpt == "fp16" and device.type in ("cuda", "mps"):
        return torch.float16  # on a CPU fp16 has no fast kernels and overflows in training: fp32
    return torch.float32


def _quantization_config(kind: str, compute: torch.dtype, device: torch.device):
    if device.type == "mps":
        raise ModelError("[model] quantization: bitsandbytes does not run on MPS; use 'none' or device = 'cpu'")
    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(model_dir: str | Path, lora: LoraSettings | None = None, settings: ModelSettings | None = None,
               *, quantization: str | None = None) -> LoadedModel:
    """Load model + tokenizer offline, as ``settings`` say (default: fp32 on the CPU... or the
    accelerator 'auto' finds); attach LoRA from ``lora`` if given. ``quantization`` overrides
    ``settings.quantization`` (the memory planner's choice for 'auto')."""
    hf_logging.disable_progress_bar()
    settings = settings or ModelSettings(device="cpu", dtype="fp32")
    model_dir = Path(model_dir)
    config, trust = load_config(model_dir, settings.trust_remote_code)
    weight_files(model_dir)  # safetensors present and complete per the index, before transformers tries
    kind = model_kind(config)
    tokenizer = load_tokenizer(model_dir)
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ModelError(
            f"{model_dir}: tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab}; "
            "use the tokenizer saved with this model"
        )
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, config, device)
    quant = quantization or settings.quantization
    quant = "none" if quant == "auto" else quant
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype, "output_loading_info": True,
                              "trust_remote_code": trust}
    if quant != "none":
        kwargs["quantization_config"] = _quantization_config(quant, dtype, device)
        kwargs["device_map"] = {"": str(device)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = auto_class(kind).from_pretrained(str(model_dir), **kwargs)
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ModelError(f"{model_dir}: cannot load model weights ({exc.__class__.__name__}: {first}); "
                         "check the weight files are complete") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing and tie_head(model, config):  # a tied head is no missing tensor
        head = model.get_output_embeddings()
        tied = {f"{n}.weight" for n, m in model.named_modules(remove_duplicate=False) if m is head}
        missing = [k for k in missing if k not in tied]
    if missing:
        raise ModelError(
            f"{model_dir}: the weights do not cover the model: {len(missing)} tensor(s) of "
            f"{type(model).__name__} missing from the checkpoint ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); save the whole model (e.g. {auto_class(kind).__name__}, not "
            "a bare AutoModel) and copy every shard"
        )
    if info.get("mismatched_keys"):
        raise ModelError(f"{model_dir}: checkpoint tensor shapes do not match config.json "
                         f"({list(info['mismatched_keys'])[:2]}); use the config saved with these weights")
    if quant == "none":
        model.to(device)
    else:
        keep_4bit_layers_differentiable(model)
    emb = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > emb:
        raise ModelError(
            f"{model_dir}: tokenizer has {len(tokenizer)} tokens but the embedding has {emb} rows; "
            "use the tokenizer saved with this model"
        )
    # The pad token is only used with attention_mask=0 and label -100, but it must exist in the model.
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False  # training only: no KV cache (and none with gradient checkpointing)
    if lora is not None:
        model = attach_lora(model, lora, kind)
    return LoadedModel(model=model, tokenizer=tokenizer, model_dir=model_dir, lora=lora, kind=kind,
                       device=str(device), dtype=dtype_name(dtype), quantization=quant)


def keep_4bit_layers_differentiable(model) -> int:
    """Turn off bitsandbytes' CPU inference layout on every 4-bit layer; returns how many were changed.

    On a CPU with AVX-512 BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` weight in place the first
    time the layer runs in eval mode on an input that needs no gradient (an evaluation pass, or the
    first layer under LoRA, whose input is the frozen embedding), and from then on computes it with
    ``gemv_4bit``, which has no autograd formula: no gradient flows back through any 4-bit base layer,
    in train mode too. The LoRA parameters below the top then receive a wrong gradient, or none.
    The repacked layout is only an inference speed-up; a member trains, so it stays off (and a weight
    already repacked is restored).
    """
    changed = 0
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
        changed += 1
    return changed


def attach_lora(model, lora: LoraSettings, kind: ModelKind | None = None):
    """Wrap ``model`` with a peft LoRA adapter at its initial value; only the adapter stays trainable
    (only B with ``lora.freeze_a``)."""
    kind = kind or model_kind(model.config)
    cfg = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=resolve_targets(model, lora.target_modules),
        bias="none",
        task_type=peft_task_type(kind),
    )
    # fork_rng: peft's own random init (overwritten below) must not move the caller's global RNG.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers/peft deprecation noise
        peft_model = get_peft_model(model, cfg)
    init_adapter(peft_model, lora.init_seed)
    if lora.freeze_a:
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    return peft_model


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layout_for_config(config, lora: LoraSettings, *, trust_remote_code: bool = False):
    """The adapter layout for a model config *without loading weights* (built on torch's meta device).

    ``config`` is a transformers ``PretrainedConfig`` or a local model directory. Lets a server that holds no
    model weights compute the adapter length and layout hash, and the benchmark size a 7B-shaped adapter.
    """
    if isinstance(config, (str, Path)):
        config, trust = load_config(config, trust_remote_code)
    else:
        trust = trust_remote_code
    kind = model_kind(config)
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = auto_class(kind).from_config(config, dtype=torch.float32, trust_remote_code=trust)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot build {getattr(config, 'model_type', '?')} from its config on the meta device "
                         f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    with torch.device("meta"):
        model = attach_lora(model, lora, kind)
    return adapter_layout(model)
