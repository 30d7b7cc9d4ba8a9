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


def _ledger_claim(tmp_path, reported, settings) -> float:
    """Append the reported DP event to a real signed ledger; return the epsilon the ledger derives."""
    import hashlib

    from securefed.crypto.keys import IdentityKeyPair
    from securefed.privacy.budget import PrivacyBudget
    from securefed.privacy.events import AccountantName, event_from_training
    from securefed.privacy.ledger import Ledger

    budget = PrivacyBudget(target_epsilon=AUDIT_TARGET_EPS, delta=AUDIT_DELTA)
    with Ledger.create(tmp_path / "ledger.sqlite", IdentityKeyPair.generate(), client_id="canary-client",
                       budget=budget) as ledger:
        ledger.append(event_from_training(
            reported, client_id="canary-client", round_id=0, delta=AUDIT_DELTA, accountant=AccountantName.RDP,
            config_hash=hashlib.sha256(settings.model_dump_json().encode()).hexdigest(),
        ))
        return ledger.epsilon()


def _run_audit(preset_dir, tmp_path, *, noise_scale: float) -> dict:
    """One training run with canaries; returns the claimed epsilon and the empirical lower bound."""
    import dataclasses
    import secrets

    import torch

    from securefed.privacy.budget import calibrate_noise
    from securefed.privacy.events import AccountantName
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
    claimed = _ledger_claim(tmp_path, dataclasses.replace(result, noise_multiplier=sigma), settings)

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


# ---- Dirac canaries: the same train_local / Opacus path on a model where each canary owns a row -----
#
# The LM audit above catches only gross noise removal (>= 100x): random-text canaries interfere with
# each other and with the data. Here each canary i is its own token i (never used by anything else),
# alternating with random targets; the model is a bigram LM (a trainable embedding, a frozen public
# read-out scaled so per-example gradients are large), so canary i's clipped gradient lands on
# embedding row i only and the auditor's score is the move of row i along its initial loss gradient.
# This is the white-box "Dirac canary" setting of Steinke et al. (and Nasr et al. 2021): the same
# train_local (Poisson sampling, per-sample clipping with Opacus hooks, CSPRNG noise), calibrated
# sigma, signed ledger. Measured (30 runs each, 100 guesses; 82 right are needed to beat the claim of 1):
# honest 44-66 right (bound 0-0.30); noise cut 10x (read-out 3): 91-99 right (bound 1.72-3.02);
# clipping off at equal absolute noise (read-out 100): 96-100 right (bound 2.32-3.49).

DIRAC_M = 200
DIRAC_REAL = 20
DIRAC_LEN = 8
DIRAC_VOCAB = DIRAC_M + 64  # tokens 0..199 are the canaries' own; 200..263 the "real" vocabulary
DIRAC_HIDDEN = 16
# Scale of the frozen read-out. 3: gradients near C = 1, rows move smoothly (best for noise checks);
# 100: per-example gradient norms far above C = 1 ("large canary gradients", needed to see clipping).
READOUT_SMOOTH, READOUT_LARGE = 3.0, 100.0


def _bigram_model(readout_scale: float):
    import types

    import torch

    class Bigram(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(DIRAC_VOCAB, DIRAC_HIDDEN)
            self.readout = torch.nn.Linear(DIRAC_HIDDEN, DIRAC_VOCAB, bias=False)
            self.readout.weight.requires_grad_(False)  # public and frozen: only the embedding trains

        def forward(self, input_ids, attention_mask=None):
            return types.SimpleNamespace(logits=self.readout(self.emb(input_ids)))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # not secret: the public initial model
        model = Bigram()
        with torch.no_grad():
            model.readout.weight.mul_(readout_scale)
    return model


def _run_dirac_audit(tmp_path, readout_scale: float, *, noise_scale: float = 1.0, clipping_off: bool = False) -> dict:
    import dataclasses
    import secrets

    import torch

    from securefed.privacy.budget import calibrate_noise
    from securefed.privacy.events import AccountantName
    from securefed.training import ClippingMode, LocalTrainingSettings, TokenDataset, plan_steps, train_local
    from securefed.training.dp import per_sample_loss

    def real_token() -> int:
        return DIRAC_M + secrets.randbelow(DIRAC_VOCAB - DIRAC_M)

    canaries = torch.tensor([[i, real_token()] * (DIRAC_LEN // 2) for i in range(DIRAC_M)])
    included = [secrets.randbelow(2) == 1 for _ in range(DIRAC_M)]
    real = torch.tensor([[real_token() for _ in range(DIRAC_LEN)] for _ in range(DIRAC_REAL)])
    ids = torch.cat([real, canaries[torch.tensor(included)]])
    data = TokenDataset(ids, torch.ones_like(ids), ids.clone())
    settings = LocalTrainingSettings(learning_rate=0.5, batch_size=20, steps=200, max_seq_len=DIRAC_LEN,
                                     clip_norm=1.0, clipping=ClippingMode.HOOKS, secure_mode=True)
    q, steps = plan_steps(settings, len(data))
    sigma = calibrate_noise(AUDIT_TARGET_EPS, AUDIT_DELTA, q, steps, AccountantName.RDP)

    model = _bigram_model(readout_scale)
    directions = []
    for i in range(DIRAC_M):  # the auditor's view: public model + canary -> expected direction of row i
        model.zero_grad()
        per_sample_loss(model(canaries[i : i + 1]).logits, canaries[i : i + 1]).sum().backward()
        g = model.emb.weight.grad[i].clone()
        directions.append(g / g.norm())
    model.zero_grad()
    start = model.emb.weight.detach().clone()

    if clipping_off:  # clip 10^4 (no clipping in effect) with the same absolute noise std sigma * 1
        actual = settings.model_copy(update={"clip_norm": 1e4})
        result = train_local(model, data, actual, sigma / 1e4)
    else:
        result = train_local(model, data, settings, sigma * noise_scale)
    moved = model.emb.weight.detach() - start
    scores = [float(-moved[i] @ directions[i]) for i in range(DIRAC_M)]

    reported = dataclasses.replace(result, noise_multiplier=sigma, clip_norm=1.0)  # what the code claims
    claimed = _ledger_claim(tmp_path, reported, settings)
    r, v = audit_guesses(scores, included, AUDIT_K, AUDIT_K)
    return {"claimed": claimed, "bound": eps_lower_bound(DIRAC_M, r, v, AUDIT_DELTA, AUDIT_BETA), "r": r, "v": v,
            "sigma_claimed": sigma}


@pytest.mark.slow
@pytest.mark.parametrize("readout", [READOUT_SMOOTH, READOUT_LARGE])
def test_dirac_canaries_honest_dp_sgd_stays_below_the_ledger_claim(tmp_path, one_torch_thread, readout):
    out = _run_dirac_audit(tmp_path, readout)
    print(f"\nDirac audit, honest: {out}")
    assert 0.9 < out["claimed"] <= AUDIT_TARGET_EPS
    assert out["bound"] < out["claimed"], out


@pytest.mark.slow
def test_dirac_canaries_catch_noise_cut_tenfold_while_the_ledger_claims_the_calibrated_sigma(tmp_path, one_torch_thread):
    out = _run_dirac_audit(tmp_path, READOUT_SMOOTH, noise_scale=0.1)
    print(f"\nDirac audit, noise / 10: {out}")
    assert 0.9 < out["claimed"] <= AUDIT_TARGET_EPS
    assert out["bound"] > out["claimed"], out


@pytest.mark.slow
def test_dirac_canaries_catch_clipping_disabled_while_the_ledger_claims_clip_1(tmp_path, one_torch_thread):
    out = _run_dirac_audit(tmp_path, READOUT_LARGE, clipping_off=True)
    print(f"\nDirac audit, clipping off: {out}")
    assert 0.9 < out["claimed"] <= AUDIT_TARGET_EPS
    assert out["bound"] > out["claimed"], out
