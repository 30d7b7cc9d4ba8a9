"""A base model with the adapter to evaluate: none, the global adapter file securefed writes, or a
PEFT adapter directory.

The global adapter file (``final_adapter.safetensors``, a checkpoint ``global-rNNNNNN.safetensors``,
a member's copy) is a securefed bundle: the flat adapter vector, its layout and the federation's
settings, digest-checked on read. The LoRA settings it names (rank, alpha, targets, init seed,
FFA-LoRA) rebuild the adapter on the base model, and the vector goes in only if the layouts agree.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from peft import PeftModel

from securefed.errors import ModelError
from securefed.protocol.bundle import read_adapter_file
from securefed.training.adapter import AdapterLayout, load_adapter_vector
from securefed.training.config import LoraSettings, ModelSettings
from securefed.training.fingerprint import compute_fingerprint
from securefed.training.model import LoadedModel, load_model


@dataclass(frozen=True)
class EvalModel:
    loaded: LoadedModel
    adapter: str | None  # what was loaded, for the report
    adapter_kind: str  # "none", "securefed-bundle" or "peft"


def load_for_eval(model_dir: str | Path, adapter: str | Path | None = None,
                  settings: ModelSettings | None = None) -> EvalModel:
    """``model_dir`` with ``adapter`` applied (``ModelError``/``CheckpointError`` in one line otherwise)."""
    settings = settings or ModelSettings(device="cpu", dtype="fp32")
    if adapter is None:
        return EvalModel(load_model(model_dir, settings=settings), None, "none")
    path = Path(adapter)
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"--adapter {path}: a directory without adapter_config.json; give a PEFT adapter "
                             "directory or securefed's adapter file (.safetensors)")
        loaded = load_model(model_dir, settings=settings)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = PeftModel.from_pretrained(loaded.model, str(path))
        except Exception as exc:  # peft raises ValueError/KeyError/RuntimeError on a mismatched adapter
            raise ModelError(f"--adapter {path}: does not fit {model_dir} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        return EvalModel(LoadedModel(model, loaded.tokenizer, loaded.model_dir, None, loaded.kind, loaded.device,
                                     loaded.dtype, loaded.quantization), str(path), "peft")
    bundle = read_adapter_file(path)
    try:
        fed = json.loads(bundle.settings_json)
        lora = LoraSettings.model_validate(fed["lora"])
    except (ValueError, KeyError, TypeError):
        raise ModelError(f"--adapter {path}: the adapter file names no LoRA settings; is it a securefed "
                         "global adapter?") from None
    expected = (fed.get("base_model") or {}).get("fingerprint")
    if expected:  # the federation's base: an adapter on another base would evaluate as noise
        mine = compute_fingerprint(model_dir)
        if mine != expected:
            raise ModelError(f"--adapter {path} was trained on base model {expected[:16]}..., but {model_dir} is "
                             f"{mine[:16]}...; evaluate it on the federation's base model")
    loaded = load_model(model_dir, lora=lora, settings=settings)
    load_adapter_vector(loaded.model, np.array(bundle.vector, dtype=np.float32),
                        AdapterLayout.from_json(bundle.layout_json))
    return EvalModel(loaded, str(path), "securefed-bundle")
