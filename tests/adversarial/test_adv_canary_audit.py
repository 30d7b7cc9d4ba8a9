"""Empirical privacy audit of the DP-SGD path in one training run (Steinke, Nasr & Jagielski 2023).

The bound maths lives in adv_audit_bound.py; the training audits are below it.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from adv_audit_bound import audit_guesses, binom_sf, eps_lower_bound, p_value_dp_audit


def _exact_sf(v: int, n: int, q: Fraction) -> Fraction:
    return sum((Fraction(math.comb(n, k)) * q**k * (1 - q) ** (n - k) for k in range(v, n + 1)), Fraction(0))


@pytest.mark.parametrize("n, v, q", [(10, 7, Fraction(3, 4)), (40, 30, Fraction(1, 2)), (25, 25, Fraction(9, 10))])
def test_binomial_tail_matches_exact_rationals(n, v, q):
    assert binom_sf(v, n, float(q)) == pytest.approx(float(_exact_sf(v, n, q)), rel=1e-9)


def test_all_correct_pure_dp_bound_has_closed_form():
    # delta = 0, v = r: p-value = q^r, so eps = logit(beta^(1/r)).
    for r in (10, 50, 100):
        q = 0.05 ** (1 / r)
        assert eps_lower_bound(m=2 * r, r=r, v=r, delta=0.0) == pytest.approx(math.log(q / (1 - q)), rel=1e-6)


def test_bound_is_monotone_in_correct_guesses_and_zero_at_chance():
    bounds = [eps_lower_bound(m=200, r=100, v=v, delta=1e-5) for v in range(50, 101, 5)]
    assert bounds[0] == 0.0
    assert all(a <= b for a, b in zip(bounds, bounds[1:]))
    assert bounds[-1] > 3.0
    # delta only makes the bound weaker (more conservative).
    assert eps_lower_bound(200, 100, 95, delta=1e-3) < eps_lower_bound(200, 100, 95, delta=0.0)


def test_p_value_and_guessing_reject_nonsense():
    with pytest.raises(ValueError):
        p_value_dp_audit(m=10, r=11, v=3, eps=1.0, delta=0.0)
    assert audit_guesses([0.1, 0.9, 0.5, -1.0], [False, True, True, False], k_pos=1, k_neg=1) == (2, 2)
    assert audit_guesses([0.9, 0.1], [False, True], k_pos=1, k_neg=1) == (2, 0)


# ---- the audit of the real DP-SGD path ---------------------------------------------------------
#
# Setting (fixed before any run, so the guesses are not tuned on the outcome):
#   m = 200 canaries: random 16-token sequences (token ids from `secrets`), each inserted into one
#   client's training set with probability 1/2 (coin flips from `secrets`), next to 20 real blocks of
#   the demo corpus. The real path: the tiny preset Llama, LoRA (rank 64 on q_proj, v_proj), and
#   securefed.training.train_local (Opacus, Poisson sampling, per-sample clipping C = 1, CSPRNG noise),
#   200 steps, expected batch 20, lr 2. The noise multiplier is calibrated by securefed.privacy to a
#   target epsilon of 1 at delta = 1e-5 (RDP), the event goes into a real signed ledger, and the claimed
#   epsilon is what the ledger derives from it.
#   Score of a canary: its loss before training minus after. Guesses: "in" for the 50 highest scores,
#   "out" for the 50 lowest (r = 100); the bound is the one-run bound with beta = 0.05.
# Honest: noise as calibrated. Broken (negative control): the noise actually added is 1000x smaller
# (essentially none) while the ledger records the calibrated multiplier, as a bug in the noise path
# would. With all 100 guesses right the bound is ~3.49, far above the claim of 1.

AUDIT_M = 200
AUDIT_REAL = 20
AUDIT_LEN = 16
AUDIT_K = 50
AUDIT_TARGET_EPS = 1.0
AUDIT_DELTA = 1e-5
AUDIT_BETA = 0.05


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    from securefed.training import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("audit-model"))


@pytest.fixture
def one_torch_thread():
    # On a shared 2-core runner, torch's intra-op thread pool spin-waits against other processes:
    # measured 90 s per training run with 2 threads under load vs 6 s with 1 thread.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run_audit(preset_dir, tmp_path, *, noise_scale: float) -> dict:
    """One training run with canaries; returns the claimed epsilon and the empirical lower bound."""
    import dataclasses
    import hashlib
    import secrets

    import torch

    from securefed.crypto.keys import IdentityKeyPair
    from securefed.privacy.budget import PrivacyBudget, calibrate_noise
    from securefed.privacy.events import AccountantName, event_from_training
    from securefed.privacy.ledger import Ledger
    from securefed.training import (
        LocalTrainingSettings,
        LoraSettings,
        TokenDataset,
        demo_client_dataset,
        load_model,
        plan_steps,
        train_local,
    )
    from securefed.training.dp import per_sample_loss

    loaded = load_model(preset_dir, LoraSettings(rank=64, alpha=64.0, target_modules=("q_proj", "v_proj")))
    model, tokenizer = loaded.model, loaded.tokenizer
    vocab = len(tokenizer)
    special = len(tokenizer.all_special_ids)
    canaries = torch.tensor(
        [[special + secrets.randbelow(vocab - special) for _ in range(AUDIT_LEN)] for _ in range(AUDIT_M)]
    )
    included = [secrets.randbelow(2) == 1 for _ in range(AUDIT_M)]
    real = demo_client_dataset(tokenizer, 0, 3, AUDIT_LEN).input_ids[:AUDIT_REAL]
    ids = torch.cat([real, canaries[torch.tensor(included)]])
    data = TokenDataset(ids, torch.ones_like(ids), ids.clone())

    settings = LocalTrainingSettings(learning_rate=2.0, batch_size=20, steps=200, max_seq_len=AUDIT_LEN,
                                     clip_norm=1.0, secure_mode=True)
    q, steps = plan_steps(settings, len(data))
    sigma = calibrate_noise(AUDIT_TARGET_EPS, AUDIT_DELTA, q, steps, AccountantName.RDP)

    def canary_losses():
        with torch.no_grad():
            logits = model(input_ids=canaries, attention_mask=torch.ones_like(canaries)).logits
            return per_sample_loss(logits, canaries).numpy()

    before = canary_losses()
    result = train_local(model, data, settings, sigma * noise_scale)
    after = canary_losses()
    assert result.secure_rng and result.steps == steps and result.sample_rate == pytest.approx(q)

    # What the ledger is told: the calibrated sigma (in the broken run, a lie the code would tell).
    reported = dataclasses.replace(result, noise_multiplier=sigma)
    identity = IdentityKeyPair.generate()
    budget = PrivacyBudget(target_epsilon=AUDIT_TARGET_EPS, delta=AUDIT_DELTA)
    with Ledger.create(tmp_path / "ledger.sqlite", identity, client_id="canary-client", budget=budget) as ledger:
        ledger.append(event_from_training(
            reported, client_id="canary-client", round_id=0, delta=AUDIT_DELTA, accountant=AccountantName.RDP,
            config_hash=hashlib.sha256(settings.model_dump_json().encode()).hexdigest(),
        ))
        claimed = ledger.epsilon()

    scores = (before - after).tolist()
    r, v = audit_guesses(scores, included, AUDIT_K, AUDIT_K)
    bound = eps_lower_bound(AUDIT_M, r, v, AUDIT_DELTA, AUDIT_BETA)
    return {"claimed": claimed, "bound": bound, "r": r, "v": v, "sigma": sigma * noise_scale}


@pytest.mark.slow
def test_honest_dp_sgd_empirical_epsilon_stays_below_the_ledger_claim(preset_dir, tmp_path, one_torch_thread):
    out = _run_audit(preset_dir, tmp_path, noise_scale=1.0)
    print(f"\nhonest canary audit: {out}")
    assert 0.9 < out["claimed"] <= AUDIT_TARGET_EPS
    assert out["bound"] < out["claimed"], out


@pytest.mark.slow
def test_broken_noise_is_caught_empirical_epsilon_exceeds_the_ledger_claim(preset_dir, tmp_path, one_torch_thread):
    # Negative control: if this ever passes with the honest path, the audit has no power.
    out = _run_audit(preset_dir, tmp_path, noise_scale=1e-3)
    print(f"\nbroken canary audit: {out}")
    assert 0.9 < out["claimed"] <= AUDIT_TARGET_EPS
    assert out["bound"] > out["claimed"], out
