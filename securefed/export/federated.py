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

from securefed.errors import CheckpointError
from securefed.evaluation.loading import load_for_eval
from securefed.protocol.bundle import Bundle, read_adapter_file
from securefed.training.config import LoraSettings
from securefed.training.model import LoadedModel


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


def read_settings(bundle: Bundle, source: Path) -> LoraSettings:
    """The LoRA settings recorded in a global bundle."""
    try:
        settings = json.loads(bundle.settings_json or "{}")
        lora = LoraSettings.model_validate(settings["lora"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{source}: the adapter records no usable LoRA settings; export a global adapter "
                              "written by securefed (server checkpoint, member's global/adapter.safetensors)") from None
    return lora


def load_federated(model_dir: str | Path, adapter_file: str | Path) -> FederatedModel:
    """``model_dir`` (fp32, CPU) with LoRA as the adapter file says, set to its values: the same loading
    ``securefed eval`` does (fingerprint checked, layout checked)."""
    model_dir, adapter_file = Path(model_dir), Path(adapter_file)
    bundle = read_adapter_file(adapter_file)
    lora = read_settings(bundle, adapter_file)
    loaded = load_for_eval(model_dir, adapter_file).loaded
    loaded.model.eval()
    rnd = bundle.meta.get("round")
    return FederatedModel(loaded, bundle, lora, adapter_file, int(rnd) if rnd and rnd.isdigit() else None)
