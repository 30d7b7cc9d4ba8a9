"""transformers' weight-tying switch, made safe for threads.

``from_pretrained`` builds the model inside ``transformers.initialization.no_tie_weights()``, which
swaps the class attribute ``PreTrainedModel.tie_weights`` for a no-op and puts back what it found.
Two loads overlapping in threads (a server loading its base while a member thread builds one; the
simulation; the suite's in-process daemons) interleave as save, swap, save the no-op, restore,
restore the no-op: from then on *no* model in the process ties its output head to its embeddings.
A tied model then saves a second, untied head, computes with a freshly initialised one after a
load, or counts the head twice in the memory planner. That was the "long-lived process" failure
seen in the suite. Upstream: huggingface/transformers#44940 (open; transformers 5.25 still swaps).

``install()`` (run when this module is imported, by every securefed module that builds models)
replaces the swap with a context variable: the no-op holds only in the thread (and context) that is
loading, and nothing global is ever left switched off.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import transformers.initialization as hf_init
from transformers.modeling_utils import PreTrainedModel

# The upstream context manager, kept for the negative control in the tests.
UPSTREAM_NO_TIE_WEIGHTS = hf_init.no_tie_weights

_suspended: contextvars.ContextVar[bool] = contextvars.ContextVar("securefed_tie_weights_suspended", default=False)


@contextlib.contextmanager
def no_tie_weights() -> Iterator[None]:
    """What ``from_pretrained`` asks for (no tying while the model is built), for this context only."""
    token = _suspended.set(True)
    try:
        yield
    finally:
        _suspended.reset(token)


def install() -> None:
    """Idempotent. Wraps ``PreTrainedModel.tie_weights`` to honour the context variable and points
    transformers' loader at ``no_tie_weights`` above."""
    current = PreTrainedModel.__dict__["tie_weights"]
    if not getattr(current, "_securefed_threadsafe", False):
        @functools.wraps(current)
        def tie_weights(self, *args, **kwargs):
            if _suspended.get():
                return None
            return current(self, *args, **kwargs)

        tie_weights._securefed_threadsafe = True  # type: ignore[attr-defined]
        PreTrainedModel.tie_weights = tie_weights
    hf_init.no_tie_weights = no_tie_weights


install()
