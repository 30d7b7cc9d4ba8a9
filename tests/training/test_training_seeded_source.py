"""The reproducible noise source of ``securefed simulate --reproducible``: the attack it enables (whoever
knows the key recomputes the noise) and the defence (secure mode refuses it, as Opacus refuses a seeded RNG)."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.errors import ConfigError
from securefed.training.adapter import adapter_to_vector, load_adapter_vector
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings
from securefed.training.data import blocks_from_texts, demo_corpus
from securefed.training.dp import train_local
from securefed.training.model import load_model
from securefed.training.preset import build_tiny_model
from securefed.training.rng import CsprngSource, SeededSource

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    lm = load_model(build_tiny_model(tmp_path_factory.mktemp("seeded") / "m", pretrain=False),
                    LoraSettings(rank=2, alpha=4))
    topics = demo_corpus()
    return lm, blocks_from_texts([topics[k] for k in sorted(topics)[:3]], lm.tokenizer, 16)


def _train(member, secure: bool, source):
    lm, data = member
    start, layout = adapter_to_vector(lm.model)
    settings = LocalTrainingSettings(learning_rate=0.5, batch_size=4, steps=2, max_seq_len=16,
                                     clipping=ClippingMode.HOOKS, secure_mode=secure)
    try:
        return train_local(lm.model, data, settings, 2.0, source=source).delta
    finally:
        load_adapter_vector(lm.model, start, layout)


def test_the_seeded_source_is_the_csprng_sampler_on_a_known_key():
    a, b = SeededSource(KEY), SeededSource(KEY)
    assert not a.secure and CsprngSource.secure
    assert np.array_equal(a.gaussian(1000, 1.0), b.gaussian(1000, 1.0))
    assert np.array_equal(a.bernoulli(1000, 0.3), b.bernoulli(1000, 0.3))
    z = SeededSource(bytes(32)).gaussian(200_000, 2.0)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 2.0) < 0.02  # the same N(0, sigma^2) as the CSPRNG's


def test_secure_mode_refuses_a_seeded_source(member):
    with pytest.raises(ConfigError, match="secure_mode = true refuses a reproducible"):
        _train(member, True, SeededSource(KEY))


def test_negative_control_with_secure_mode_off_the_key_reproduces_the_noise(member):
    # The attack the refusal prevents: knowing the key, one reruns the member's training and gets its
    # noisy update to the bit (so the noise can be subtracted). With fresh CSPRNG keys it cannot.
    seeded = [_train(member, False, SeededSource(KEY)) for _ in range(2)]
    assert np.array_equal(seeded[0], seeded[1]) and np.any(seeded[0] != 0)
    fresh = [_train(member, True, None) for _ in range(2)]
    assert not np.array_equal(fresh[0], fresh[1])
