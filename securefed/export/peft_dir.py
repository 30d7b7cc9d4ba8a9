"""The adapter as a PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``), which
``PeftModel.from_pretrained(base, dir)`` loads onto the base checkpoint: what PEFT, vLLM and TGI take."""

from __future__ import annotations

import warnings
from pathlib import Path

from securefed.fsutil import share_tree


def save_peft_dir(peft_model, out_dir: Path, base_model_dir: Path | None = None) -> Path:
    """``peft_model`` (LoRA attached, adapter set) saved as a PEFT adapter directory naming its base."""
    config = peft_model.peft_config["default"]
    if base_model_dir is not None:
        config.base_model_name_or_path = str(Path(base_model_dir).resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    share_tree(out_dir)
    return Path(out_dir)
