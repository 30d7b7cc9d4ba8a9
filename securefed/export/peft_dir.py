"""The adapter as a PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``), which
``PeftModel.from_pretrained(base, dir)`` loads onto the base checkpoint: what PEFT, vLLM and TGI take."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

SHARED_FILE_MODE = 0o644
SHARED_DIR_MODE = 0o755


def make_shared(root: Path) -> None:
    """Readable by whoever serves it, whatever the umask: directories 0755, files 0644."""
    if root.is_file():
        os.chmod(root, SHARED_FILE_MODE)
        return
    os.chmod(root, SHARED_DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), SHARED_DIR_MODE)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), SHARED_FILE_MODE)


def save_peft_dir(peft_model, out_dir: Path, base_model_dir: Path | None = None) -> Path:
    """``peft_model`` (LoRA attached, adapter set) saved as a PEFT adapter directory naming its base."""
    config = peft_model.peft_config["default"]
    if base_model_dir is not None:
        config.base_model_name_or_path = str(Path(base_model_dir).resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    make_shared(Path(out_dir))
    return Path(out_dir)
