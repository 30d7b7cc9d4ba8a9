"""The base checkpoint with a federation's global adapter in it: the starting point of every export.

The adapter file is the global bundle securefed writes (the server's ``checkpoints/global-rNNNNNN.safetensors``,
a member's ``global/adapter.safetensors``, the demo's ``final_adapter.safetensors``): the flat adapter
vector, its layout and the federation's settings, checked against its digest on read. Its LoRA settings
say how to attach the adapter; its base-model fingerprint must be the model directory's, or the adapter
would be exported onto a model it was never trained for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed.errors import CheckpointError, ModelError
from securefed.protocol.bundle import Bundle, read_adapter_file
from securefed.training.adapter import AdapterLayout, load_adapter_vector
from securefed.training.config import LoraSettings
from securefed.training.fingerprint import compute_fingerprint, short
from securefed.training.model import LoadedModel, load_model


@dataclass
class FederatedModel:
    loaded: LoadedModel  # the base with LoRA attached (peft), set to the federation's adapter
    bundle: Bundle
    lora: LoraSettings
    adapter_file: Path
    round: int | None

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer


def read_settings(bundle: Bundle, source: Path) -> tuple[LoraSettings, str | None]:
    """(LoRA settings, base-model fingerprint or None) recorded in a global bundle."""
    try:
        settings = json.loads(bundle.settings_json or "{}")
        lora = LoraSettings.model_validate(settings["lora"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{source}: the adapter records no usable LoRA settings; export a global adapter "
                              "written by securefed (server checkpoint, member's global/adapter.safetensors)") from None
    base = settings.get("base_model") or {}
    return lora, base.get("fingerprint") if isinstance(base, dict) else None


def load_federated(model_dir: str | Path, adapter_file: str | Path) -> FederatedModel:
    """``model_dir`` (fp32, CPU) with LoRA as the adapter file says, set to its values."""
    model_dir, adapter_file = Path(model_dir), Path(adapter_file)
    bundle = read_adapter_file(adapter_file)
    lora, want_fp = read_settings(bundle, adapter_file)
    if want_fp:
        have = compute_fingerprint(model_dir)
        if have != want_fp:
            raise ModelError(f"{adapter_file} was trained on the base model {short(want_fp)}..., but {model_dir} is "
                             f"{short(have)}...; export it with the federation's base checkpoint")
    loaded = load_model(model_dir, lora=lora)
    load_adapter_vector(loaded.model, np.array(bundle.vector, dtype=np.float32), AdapterLayout.from_json(bundle.layout_json))
    loaded.model.eval()
    rnd = bundle.meta.get("round")
    return FederatedModel(loaded, bundle, lora, adapter_file, int(rnd) if rnd and rnd.isdigit() else None)
