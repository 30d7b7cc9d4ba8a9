"""Nothing reaches a model hub at run time: the switches that keep Hugging Face libraries offline.

Imported by ``securefed/__init__.py``, so the environment is set before any entry point imports
transformers, huggingface_hub, peft, kernels or bitsandbytes (each reads it when imported or called).
A member must never fetch weights, code or kernels, and must not print a library's advice to trust
remote code; these are deliberate settings of securefed, not of the user's shell.

bitsandbytes (0.50) asks the ``kernels`` package, when it is imported on a CPU with AVX-512 BF16, for
a 4-bit inference kernel from the hub (``kernels-community/quantization-bitsandbytes``). Offline, that
call fails before any connection and bitsandbytes falls back to the kernel it ships; the kernel is
only used for the packed CPU inference layout, which securefed turns off anyway (it carries no
gradient: :func:`securefed.training.model.keep_4bit_layers_differentiable`), so the two warnings that
report the fallback (one advising to trust remote code) become one DEBUG line.
"""

from __future__ import annotations

import logging
import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub: no request at all (kernels and transformers ask it)
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DISABLE_KERNEL_MAPPING": "1",  # kernels: no hub kernels swapped into transformers layers
}

log = logging.getLogger(__name__)


class _HubKernelFallback(logging.Filter):
    """Turns the hub-kernel fallback messages of bitsandbytes and kernels into one DEBUG line.

    Installed on the two loggers that report it before either library is imported (a logger is
    created by name, so bitsandbytes' own ``getLogger(__name__)`` returns the filtered one).
    """

    _MARKERS = ("kernels-community", "publisher trust check")

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not any(m in record.getMessage() for m in self._MARKERS):
            return True
        if not self.dropped:
            log.debug("bitsandbytes: hub kernel for CPU 4-bit inference not fetched (offline); using its own kernel")
        self.dropped += 1
        return False


HUB_KERNEL_FALLBACK = _HubKernelFallback()
# Each module's own ``logging.getLogger(__name__)``.
_FALLBACK_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")


def apply() -> None:
    """Force the offline switches on (a user's ``HF_HUB_OFFLINE=0`` does not turn them off)."""
    os.environ.update(OFFLINE_ENV)
    for name in _FALLBACK_LOGGERS:
        logging.getLogger(name).addFilter(HUB_KERNEL_FALLBACK)  # a filter is added once, however often


apply()
