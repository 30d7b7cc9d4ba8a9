"""DP-SGD local training of the LoRA adapter with Opacus (Poisson sampling, per-sample clipping, Gaussian noise).

What the accountant needs comes back in :class:`LocalTrainResult`: sample rate ``q``, number of steps,
noise multiplier, clipping norm, and whether the noise came from a CSPRNG. The caller (the privacy
module) turns exactly these into a DP event; this module does no accounting.

Privacy unit: one training example, i.e. one ``max_seq_len``-token block (demo corpus) or one JSONL record.
A document that spans several blocks is protected only at the block level (group privacy applies).

Implementation notes
- Batches are drawn by Poisson sampling (each example independently with probability q), which is what
  the RDP/PRV accountants assume; in secure mode the coin flips come from the CSPRNG as well.
- The Opacus ``PrivacyEngine`` wraps model and optimizer. Its noise step is replaced by ours (see
  :mod:`securefed.training.rng`) because Opacus' secure mode needs torchcsprng, unavailable for this torch.
- Clipping: Opacus ghost clipping (per-sample norms without per-sample gradients) or classic grad_sample
  hooks; both are verified against plain SGD on LoRA in the tests. ``auto`` picks hooks while the
  per-sample adapter gradients are small (faster for LoRA) and ghost beyond that, falling back to hooks if
  ghost fails; the mode that ran is logged and returned.
- An empty Poisson batch still takes a step with pure noise: skipping it would leak that the batch was empty
  and break the accountant's assumption.
- Strategy corrections (FedProx proximal term, SCAFFOLD control variates) depend only on weights and
  public/previous-round state, not on this round's data, so they are added *after* clipping and noise: no
  privacy cost, and they do not eat into the clipping budget.
- Memory: one Poisson-sampled logical batch is processed in physical micro-batches of at most
  ``physical_batch_size`` rows (Opacus' skip-step protocol, as its ``BatchMemoryManager`` uses: each
  micro-batch's clipped per-sample gradients are summed, noise is added once for the logical batch),
  so the mechanism and the accounting are those of the logical batch. With gradient checkpointing the
  recomputed forward pass must not record activations for Opacus a second time
  (:func:`enable_gradient_checkpointing`). The loss never holds the full logits
  (:mod:`securefed.training.loss`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch.utils.data import DataLoader, TensorDataset

from securefed.errors import ConfigError, InvalidInput, ModelError
from securefed.training.adapter import adapter_to_vector, load_adapter_vector
from securefed.training.config import ClippingMode, LocalTrainingSettings
from securefed.training.data import TokenDataset
from securefed.training.families import model_kind
from securefed.training.loss import SequenceLoss, per_sample_loss
from securefed.training.model import LoadedModel
from securefed.training.rng import CsprngSource, RandomSource, TorchSource

__all__ = ["DPTrainer", "GradientCorrection", "LocalTrainResult", "per_sample_loss", "plan_steps", "train_local",
           "enable_gradient_checkpointing", "make_optimizer"]

log = logging.getLogger(__name__)


class Collective(Protocol):
    """How the ranks of one member combine their clipped sums (:mod:`securefed.distributed`); None in a
    single process. Called once per step by every rank, in the same order."""

    def all_reduce_sum(self, flat: Any) -> Any:
        """Elementwise sum over the ranks of a flat float tensor (in place, returned)."""


class GradientCorrection(Protocol):
    """A data-independent term added to the (already private) gradient at every local step."""

    def correction(self, current: Any, initial: Any) -> Any | None:
        """``current``/``initial``: flat float32 torch tensors of the adapter; return a same-shape tensor or None."""


ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


@dataclass(frozen=True)
class LocalTrainResult:
    """The outcome of one round of local DP-SGD, and the facts the privacy accountant needs."""

    delta: np.ndarray  # float32: trained adapter - adapter at the start (the global adapter)
    num_samples: int  # dataset size N
    steps: int  # DP-SGD steps taken (each one a Poisson-subsampled Gaussian mechanism)
    sample_rate: float  # q = expected batch size / N
    noise_multiplier: float  # sigma; noise std = sigma * clip_norm on the summed clipped gradients
    clip_norm: float  # C
    secure_rng: bool  # noise and sampling from a CSPRNG
    clipping_mode: ClippingMode  # GHOST or HOOKS: what actually ran
    train_loss: float  # mean per-sample loss over the round's non-empty batches (before the update)
    learning_rate: float
    expected_batch_size: int
    empty_batches: int = 0
    seconds: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)


class _Recompute:
    """Checkpointing re-runs each layer's forward pass during backward; Opacus' forward hooks must not
    record that pass's activations a second time (they would pair with the wrong backward pass and
    leave the per-sample gradients unset). The recompute context turns them off for its duration."""

    def __init__(self) -> None:
        self.module = None  # the GradSampleModule currently training this model, if any

    def contexts(self):
        return contextlib.nullcontext(), _QuietHooks(self)


class _QuietHooks:
    """Re-enterable (ghost clipping's second backward recomputes again with the same context)."""

    def __init__(self, owner: _Recompute) -> None:
        self.owner = owner
        self.saved: list[bool] = []

    def __enter__(self):
        m = self.owner.module
        if m is not None:
            self.saved.append(m.hooks_enabled)
            m.hooks_enabled = False
        return self

    def __exit__(self, *exc) -> None:
        m = self.owner.module
        if m is not None and self.saved:
            m.hooks_enabled = self.saved.pop()  # ghost clipping's second backward runs with hooks off: keep that


def enable_gradient_checkpointing(model) -> None:
    """Activation checkpointing on every transformer layer, safe under Opacus (see ``_Recompute``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ModelError(f"{type(base).__name__} does not support gradient checkpointing; set "
                         "[model] gradient_checkpointing = false")
    guard = _Recompute()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
                                                                      "context_fn": guard.contexts})
    base._securefed_recompute = guard


def _unwrap(model):
    return model.model if isinstance(model, LoadedModel) else model


def _noise_add(optimizer, source: RandomSource, collective: Collective | None = None) -> None:
    """Replacement for ``DPOptimizer.add_noise``: same contract, our random source. With several ranks
    (``collective``) only rank 0's source draws noise (the others' yield zeros) and the noisy sum is
    reduced over the ranks before Opacus scales it: clipped sums of every rank plus one noise draw, the
    single-process mechanism (Opacus' ``DistributedDPOptimizer`` places its noise the same way)."""
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    params = optimizer.params
    for p in params:
        if p.summed_grad is None:
            raise ModelError("DP-SGD: a trainable parameter got no clipped gradient; refusing to step")
    # One draw for the whole adapter, then sliced per parameter: i.i.d. N(0, std^2) per coordinate exactly
    # as per-parameter draws would be (one keystream, never reused), but one CSPRNG/Box-Muller pass instead
    # of one per tensor - the per-call overhead dominated for LoRA's many small tensors.
    noise = torch.from_numpy(source.gaussian(sum(p.summed_grad.numel() for p in params), std))
    offset = 0
    for p in params:
        summed = p.summed_grad
        k = summed.numel()
        chunk = noise[offset : offset + k].to(dtype=summed.dtype, device=summed.device).view_as(summed)
        offset += k
        p.grad = (summed + chunk).view_as(p)
        # Opacus marks summed_grad as processed; mirror that so its own checks stay meaningful.
        p.summed_grad._processed = True  # type: ignore[attr-defined]
    if collective is not None:  # one flat buffer: one collective a step, not one per LoRA tensor
        flat = collective.all_reduce_sum(torch.cat([p.grad.reshape(-1) for p in params]))
        offset = 0
        for p in params:
            k = p.grad.numel()
            p.grad = flat[offset : offset + k].view_as(p).clone()
            offset += k


def make_optimizer(settings: LocalTrainingSettings, params) -> torch.optim.Optimizer:
    """The optimizer ``settings`` name over ``params``; Opacus wraps it, so it steps on the clipped,
    noised gradient (post-processing: the mechanism and its accounting do not depend on it)."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.learning_rate)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    return torch.optim.SGD(params, lr=settings.learning_rate)


class DPTrainer:
    """Opacus-wrapped model + optimizer for one round; :meth:`step` takes one DP-SGD step on a given batch.

    ``train_local`` drives it with Poisson batches; tests drive it with fixed batches.
    """

    def __init__(
        self,
        model,
        settings: LocalTrainingSettings,
        noise_multiplier: float,
        expected_batch_size: int,
        mode: ClippingMode,
        source: RandomSource,
        correction: GradientCorrection | None = None,
        *,
        loss: SequenceLoss | None = None,
        physical_batch_size: int | None = None,
        grad_mask: list | None = None,
        collective: Collective | None = None,
    ) -> None:
        if mode is ClippingMode.AUTO:
            raise ValueError("DPTrainer needs a concrete clipping mode")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.loss = loss or SequenceLoss(model, model_kind(getattr(base, "config", None)))
        self.physical = int(physical_batch_size) if physical_batch_size else None
        self._recompute = getattr(base, "_securefed_recompute", None)
        self.model = model
        self.mode = mode
        self.source = source
        self.correction = correction
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(settings.clip_norm)
        self.expected_batch_size = int(expected_batch_size)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Per trainable tensor, a 0/1 mask broadcastable to it (None: all of it trains): the coordinates a
        # partial member trains (securefed.heterogeneous); the rest never move.
        self.grad_mask = grad_mask if grad_mask is not None and any(m is not None for m in grad_mask) else None
        if self.grad_mask is not None and len(self.grad_mask) != len(self.params):
            raise ValueError("grad_mask needs one entry per trainable parameter")
        self.collective = collective
        self._last_norms = None
        with torch.no_grad():
            self.initial = torch.cat([p.detach().reshape(-1) for p in self.params]).clone()
        model.train()
        optimizer = make_optimizer(settings, self.params)
        # The loader only tells Opacus what a batch looks like; we sample batches ourselves (Poisson).
        dummy = DataLoader(TensorDataset(torch.zeros(self.expected_batch_size, 1)), batch_size=self.expected_batch_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns about secure_mode=False; train_local logs our own line
            engine = PrivacyEngine(accountant="rdp", secure_mode=False)
            out = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=dummy,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.clip_norm,
                poisson_sampling=True,
                grad_sample_mode="ghost" if mode is ClippingMode.GHOST else "hooks",
                loss_reduction="mean",
            )
        if mode is ClippingMode.GHOST:
            self.module, self.optimizer, _criterion, _ = out
        else:
            self.module, self.optimizer, _ = out
        # Opacus derives expected batch = N * (1/len(loader)); pin it to ours so scaling matches q * N.
        self.optimizer.expected_batch_size = self.expected_batch_size
        # Opacus' own accountant would count steps at its dummy sample rate; accounting is the caller's job.
        self.optimizer.step_hook = None
        self.optimizer.add_noise = types.MethodType(lambda opt: _noise_add(opt, self.source, self.collective),
                                                    self.optimizer)
        if self._recompute is not None:
            self._recompute.module = self.module

    @property
    def last_norms(self):
        """Per-sample gradient L2 norms (before clipping) of the last non-empty step."""
        return self._last_norms

    def close(self) -> None:
        """Remove Opacus hooks and attributes so the model can be used (or trained) again."""
        if self._recompute is not None:
            self._recompute.module = None
        try:
            self.module._close()
        except Exception:  # pragma: no cover - best effort cleanup
            log.debug("opacus cleanup failed", exc_info=True)
        for mod in self.model.modules():
            for attr in ("activations", "max_batch_len"):
                if attr in mod.__dict__:
                    delattr(mod, attr)
        for p in self.params:
            for attr in ("grad_sample", "summed_grad", "_norm_sample", "_forward_counter", "_current_grad_sample"):
                if hasattr(p, attr):
                    try:
                        delattr(p, attr)
                    except AttributeError:
                        pass
            p.grad = None

    def _flat(self):
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _mask(self, attr: str) -> None:
        """Zero the untrained coordinates of ``p.<attr>`` (per-sample gradients before clipping, so
        they spend none of the clipping budget; the final gradient, so noise and corrections stay off)."""
        if self.grad_mask is None:
            return
        for p, m in zip(self.params, self.grad_mask):
            t = getattr(p, attr, None)
            if m is not None and isinstance(t, torch.Tensor):
                t.mul_(m)

    def _apply_correction(self) -> None:
        if self.correction is None:
            return
        corr = self.correction.correction(self._flat(), self.initial)
        if corr is None:
            return
        corr = corr.to(self.params[0].device)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad.add_(corr[offset : offset + n].view_as(p).to(p.grad.dtype))
            offset += n

    def step(self, batch: dict | None) -> float | None:
        with warnings.catch_warnings():
            # torch warns that full backward hooks fire w.r.t. outputs because the frozen base's inputs need
            # no grad: expected here (only the adapter trains), and Opacus hooks need exactly that.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return self._step(batch)

    def _step(self, batch: dict | None) -> float | None:
        """One DP-SGD step on ``batch`` (a dict from TokenDataset.batch) or a pure-noise step if None/empty.

        The logical batch runs in micro-batches of at most ``physical_batch_size`` rows: clipped
        per-sample gradients are summed across them and the noise is added once. Returns the batch's
        mean per-sample loss (None for an empty batch).
        """
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        total, n = 0.0, 0
        if batch is None or batch["input_ids"].shape[0] == 0:
            # Pure noise step: the clipped sum of an empty batch is 0.
            for p in self.params:
                p.summed_grad = torch.zeros_like(p)
            opt.add_noise()
            for p in self.params:  # same scaling as Opacus' scale_grad for loss_reduction="mean"
                p.grad /= self.expected_batch_size
        else:
            n = int(batch["input_ids"].shape[0])
            size = min(n, self.physical or n)
            starts = list(range(0, n, size))
            dev = self.params[0].device
            norms = []
            for k, start in enumerate(starts):
                micro = {key: v[start:start + size].to(dev) for key, v in batch.items()}
                losses = self.loss(self.module, micro)
                total += float(losses.detach().sum())
                if self.mode is ClippingMode.GHOST:
                    DPTensorFastGradientClipping(self.module, opt, losses, "mean").backward()
                    for p in self.params:
                        if p.grad is None:
                            raise ModelError("ghost clipping produced no gradient for an adapter parameter")
                    norms.append(self.module.per_sample_gradient_norms.detach().clone())
                    self._mask("grad")  # ghost norms saw every coordinate: conservative clipping, same bound
                else:
                    losses.mean().backward()
                    for p in self.params:
                        # Guard against opacus#820-style failures: a missing per-sample gradient would make
                        # Opacus fall back to the plain (unclipped, un-noised) gradient.
                        if not isinstance(getattr(p, "grad_sample", None), torch.Tensor):
                            raise ModelError(
                                "per-sample gradients missing for an adapter parameter (Opacus hooks not attached); "
                                "use clipping='ghost' or a supported model"
                            )
                    # Per-sample norms are diagnostics only (clipping computes its own).
                    with torch.no_grad():
                        norms.append(torch.stack([p.grad_sample.reshape(p.grad_sample.shape[0], -1).float()
                                                  .pow(2).sum(1) for p in self.params]).sum(0).sqrt())
                    self._mask("grad_sample")
                last = k == len(starts) - 1
                if not last:
                    opt.signal_skip_step(do_skip=True)  # sum this micro-batch's clipped gradients, no noise yet
                stepped = opt.pre_step()  # clip (hooks) and accumulate; on the last one also noise and scale
                if stepped != last:
                    raise ModelError("DP optimizer skipped or took a step out of turn")
                if not last:
                    opt.zero_grad(set_to_none=True)  # keeps the summed clipped gradients (skipped step)
            self._last_norms = torch.cat(norms).cpu()
        if self.collective is not None:  # the logical batch's loss, over every rank's rows
            total, n = (float(v) for v in self.collective.all_reduce_sum(torch.tensor([total, float(n)],
                                                                                       dtype=torch.float64)))
        self._apply_correction()
        self._mask("grad")
        opt.original_optimizer.step()
        return total / n if n else None


# Per-sample gradients of a LoRA adapter are small (batch x adapter size), and ghost clipping pays a second
# full backward pass through the frozen network: measured on CPU it costs ~1.7-2x a plain step where hooks
# cost ~1.1-1.25x (bench/training.py). So AUTO uses hooks while the per-sample gradients fit this budget and
# ghost clipping (which never materialises them) beyond it, falling back to hooks if ghost fails.
AUTO_GHOST_ABOVE_BYTES = 512 * 1024 * 1024


def choose_clipping(requested: ClippingMode, batch_size: int, adapter_size: int) -> list[ClippingMode]:
    """Clipping modes to try, in order, for ``requested`` (AUTO decides by per-sample gradient memory)."""
    if requested is not ClippingMode.AUTO:
        return [requested]
    # Opacus holds the per-sample gradients plus a clipped copy: ~2 float32 tensors of [B, P].
    per_sample_bytes = 2 * 4 * batch_size * adapter_size
    if per_sample_bytes > AUTO_GHOST_ABOVE_BYTES:
        return [ClippingMode.GHOST, ClippingMode.HOOKS]
    return [ClippingMode.HOOKS]


def _resolve_sigma(settings: LocalTrainingSettings, noise_multiplier: float | None) -> float:
    sigma = noise_multiplier if noise_multiplier is not None else settings.noise_multiplier
    if sigma is None:
        raise ConfigError("noise_multiplier: not set; the client's accountant must calibrate it to the budget")
    if not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"noise_multiplier: {sigma} is invalid; use a finite value >= 0")
    return float(sigma)


def plan_steps(settings: LocalTrainingSettings, num_samples: int) -> tuple[float, int]:
    """(q, steps) for this dataset size, exactly as train_local will use them (for budget projection)."""
    if num_samples < 1:
        raise InvalidInput("training dataset is empty")
    if settings.batch_size > num_samples:
        raise InvalidInput(
            f"[training] batch_size = {settings.batch_size} exceeds the {num_samples} training examples: set "
            f"batch_size to at most {num_samples} in the [training] section of the member's config (add the section "
            "if it has none), or give this member more data"
        )
    q = settings.batch_size / num_samples
    steps = settings.steps if settings.steps is not None else max(1, math.ceil(settings.epochs / q))
    return q, steps


def train_local(
    model,
    train_data: TokenDataset,
    settings: LocalTrainingSettings,
    noise_multiplier: float | None,
    *,
    strategy_state: GradientCorrection | None = None,
    progress: ProgressFn | None = None,
    physical_batch_size: int | None = None,
    loss: SequenceLoss | None = None,
    grad_mask: list | None = None,
    collective: Collective | None = None,
    shard: Callable[[dict | None], dict | None] | None = None,
    source: RandomSource | None = None,
) -> LocalTrainResult:
    """Train the adapter of ``model`` (a peft model, or a ``LoadedModel``) with DP-SGD for one round.

    The adapter currently loaded in ``model`` is the starting point (load the global adapter first);
    on return the model holds the locally trained adapter and ``result.delta`` is new - start.
    ``physical_batch_size`` caps the rows of one forward/backward pass (micro-batches under the one
    Poisson-sampled logical batch; the privacy accounting is unchanged). ``grad_mask``: see
    :class:`DPTrainer`. Several ranks (:mod:`securefed.distributed`): ``shard`` hands the other ranks
    their rows of each sampled batch and returns this rank's, ``collective`` sums the clipped sums;
    sampling and noise stay on this rank (rank 0).
    Poisson-sampled logical batch; the privacy accounting is unchanged).
    ``source``: where noise and sampling come from (default: the CSPRNG in secure mode, torch's RNG
    otherwise); a source that is not secure is refused in secure mode, as Opacus refuses a seeded RNG.
    """
    model = _unwrap(model)
    sigma = _resolve_sigma(settings, noise_multiplier)
    if not isinstance(train_data, TokenDataset):
        raise InvalidInput("train_data must be a TokenDataset (see securefed.training.data)")
    n = len(train_data)
    q, steps = plan_steps(settings, n)
    start_vec, _layout = adapter_to_vector(model)
    if source is None:
        source = CsprngSource() if settings.secure_mode else TorchSource()
    elif settings.secure_mode and not source.secure:
        raise ConfigError("secure_mode = true refuses a reproducible (seeded) noise source: its noise can be "
                          "recomputed by whoever knows the seed; set secure_mode = false only for tests and simulations")
    if not source.secure:
        log.warning("DP-SGD noise and sampling use a reproducible, NON-secret RNG (%s, secure_mode=false): "
                    "for testing only, not a production privacy guarantee", type(source).__name__)
    if sigma == 0.0:
        log.warning("noise_multiplier is 0: this training is NOT differentially private")

    physical = min(settings.batch_size, physical_batch_size) if physical_batch_size else None
    modes = choose_clipping(settings.clipping, physical or settings.batch_size, _layout.total_size)
    if collective is not None:
        modes = modes[:1]  # every rank must run the same mode: no per-rank fallback
    last_error: Exception | None = None
    for mode in modes:
        t0 = time.perf_counter()
        trainer = None
        try:
            trainer = DPTrainer(model, settings, sigma, settings.batch_size, mode, source, strategy_state,
                                loss=loss, physical_batch_size=physical, grad_mask=grad_mask, collective=collective)
            losses: list[float] = []
            empty = 0
            for step in range(steps):
                mask = source.bernoulli(n, q)
                idx = np.flatnonzero(mask)
                batch = train_data.batch(idx.tolist()) if idx.size else None
                loss = trainer.step(shard(batch) if shard is not None else batch)
                if loss is None:
                    empty += 1
                else:
                    losses.append(loss)
                if progress is not None:
                    progress(step + 1, steps, float("nan") if loss is None else loss)
        except (NotImplementedError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
            if len(modes) == 1 or mode is not ClippingMode.GHOST:
                raise ModelError(f"DP-SGD with clipping={mode.value} failed on this model: {exc}") from exc
            # Auto: restore the starting adapter and retry with hooks. Nothing was released.
            log.warning("ghost clipping failed on this model (%s); falling back to hooks", exc)
            last_error = exc
            if trainer is not None:
                trainer.close()
                trainer = None
            load_adapter_vector(model, start_vec, _layout)
            continue
        finally:
            if trainer is not None:
                trainer.close()
        end_vec, _ = adapter_to_vector(model)
        if not np.all(np.isfinite(end_vec)):
            raise ModelError("training diverged (NaN/Inf in the adapter); lower learning_rate")
        log.info(
            "local DP-SGD: clipping=%s steps=%d q=%.5f sigma=%.4f C=%.3g secure_rng=%s",
            mode.value, steps, q, sigma, settings.clip_norm, source.secure,
        )
        return LocalTrainResult(
            delta=(end_vec - start_vec).astype(np.float32),
            num_samples=n,
            steps=steps,
            sample_rate=q,
            noise_multiplier=sigma,
            clip_norm=float(settings.clip_norm),
            secure_rng=source.secure,
            clipping_mode=mode,
            train_loss=float(np.mean(losses)) if losses else float("nan"),
            learning_rate=float(settings.learning_rate),
            expected_batch_size=settings.batch_size,
            empty_batches=empty,
            seconds=time.perf_counter() - t0,
        )
    raise ModelError(f"DP-SGD failed with every clipping mode: {last_error}")  # pragma: no cover
