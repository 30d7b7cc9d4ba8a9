"""Weight tying survives loads that overlap in threads (securefed.training.hf_tying).

transformers' ``no_tie_weights`` swaps ``PreTrainedModel.tie_weights`` for a no-op on the class; two
overlapping loads restore in the wrong order and leave it switched off for the whole process (the
suite's order-dependent "untied head" failures; huggingface/transformers#44940)."""

from __future__ import annotations

import threading

import pytest
import transformers.initialization as hf_init
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_utils import PreTrainedModel

from securefed.training import hf_tying

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
           num_key_value_heads=1, tie_word_embeddings=True)


def _tied() -> bool:
    model = LlamaForCausalLM(LlamaConfig(**CFG))
    return model.lm_head.weight is model.model.embed_tokens.weight


def _overlap(no_tie_weights) -> bool:
    """Two loads (threads) each inside ``no_tie_weights``, leaving first in, first out (the order that
    breaks the class swap); while both are open this thread builds a model of its own. True if that
    model was tied."""
    a_in, b_in, built, a_out = threading.Event(), threading.Event(), threading.Event(), threading.Event()

    def first():
        with no_tie_weights():
            a_in.set()
            built.wait(5)
        a_out.set()

    def second():
        a_in.wait(5)
        with no_tie_weights():
            b_in.set()
            a_out.wait(5)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    b_in.wait(5)
    tied = _tied()  # not a load: a model this thread builds while the others load
    built.set()
    for t in threads:
        t.join(10)
    return tied


def test_overlapping_loads_in_threads_leave_tying_on():
    assert hf_init.no_tie_weights is hf_tying.no_tie_weights  # what from_pretrained will use
    assert _overlap(hf_tying.no_tie_weights)  # the loads' switch is theirs alone
    assert _tied()  # and nothing is left switched off afterwards
    with hf_tying.no_tie_weights():
        assert not _tied()  # inside, the loader still gets what it asked for


def test_control_upstreams_class_swap_unties_other_threads_and_stays_off():
    wrapped = PreTrainedModel.__dict__["tie_weights"]
    try:
        assert not _overlap(hf_tying.UPSTREAM_NO_TIE_WEIGHTS)  # another thread's model is not tied
        assert not _tied()  # ... and after both loads ended, no model in the process is
    finally:
        PreTrainedModel.tie_weights = wrapped
    assert _tied()


def test_install_is_idempotent():
    wrapped = PreTrainedModel.__dict__["tie_weights"]
    hf_tying.install()
    assert PreTrainedModel.__dict__["tie_weights"] is wrapped


@pytest.mark.parametrize("tied", [True, False])
def test_a_tiny_llama_saves_one_head_only_when_tied(tmp_path, tied):
    from safetensors.torch import load_file

    model = LlamaForCausalLM(LlamaConfig(**{**CFG, "tie_word_embeddings": tied}))
    model.save_pretrained(str(tmp_path))
    assert ("lm_head.weight" in load_file(str(tmp_path / "model.safetensors"))) is not tied
