"""The member's local model work: base model + LoRA, its private data, DP-SGD rounds, evaluation, export.

Loading is lazy and done once: the tokenizer, data and the base model's fingerprint at start-up (so
the budget can be planned and a plan for another base declined), the model with the federation's
LoRA settings at the first plan (reloaded only if those change), on this member's hardware as its
``[model]`` settings say: dtype, device, quantization, and a memory plan (physical micro-batches,
gradient checkpointing) that fits ``max_memory_gb``. Everything here runs on the member's own data
and never talks to the network.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from securefed.client.config import ClientConfig
from securefed.client.progress import Progress
from securefed.distributed.checks import RankLayout, rank_layout
from securefed.distributed.group import RankGroup
from securefed.errors import ConfigError, InvalidInput, ModelError, RankFailed
from securefed.export.peft_dir import save_peft_dir
from securefed.heterogeneous.partial import PartialAdapter, load_for_training
from securefed.logs import get_logger, log
from securefed.protocol.bundle import Bundle
from securefed.strategies.base import ClientPayload, Strategy, load_vector
from securefed.training import data as td
from securefed.training.adapter import AdapterLayout, load_adapter_vector
from securefed.training.config import LoraSettings
from securefed.training.dp import LocalTrainResult, plan_steps, train_local
from securefed.training.families import model_kind
from securefed.training.fingerprint import base_fingerprint
from securefed.training.loss import SequenceLoss
from securefed.training.memory import MemoryPlan, plan_for_checkpoint
from securefed.training.model import load_config, load_tokenizer

logger = get_logger("client.trainer")


class Trainer:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._model = None
        self._loaded = None
        self._loss: SequenceLoss | None = None
        self._tokenizer = None
        self._lora_json: str | None = None
        self._fingerprint: str | None = None
        self.plan: MemoryPlan | None = None
        self.data: td.TokenDataset | None = None
        self.data_stats: td.LoadStats | None = None  # JSONL only: truncation and packing counts
        self.heldout: td.TokenDataset | None = None
        self.kind = None
        self._partial: PartialAdapter | None = None  # this member trains part of the adapter
        self._ranks: RankGroup | None = None  # [model] processes > 1: the worker ranks (this process is rank 0)

    @property
    def dataset_size(self) -> int:
        return len(self.load_data())

    @property
    def model_dir(self) -> Path:
        return self.config.client.base_model_dir

    def base_fingerprint(self) -> str:
        """This member's base checkpoint, hashed (streamed; cached in the state dir)."""
        if self._fingerprint is None:
            shown = [0]  # percent reported so far
            with Progress("fingerprinting the base model", 100, "%") as prog:
                def tick(done: int, total: int) -> None:
                    pct = int(100 * done / max(total, 1))
                    if pct > shown[0]:
                        prog.update(pct - shown[0])
                        shown[0] = pct

                self._fingerprint = base_fingerprint(self.model_dir, cache_dir=self.config.client.state_dir,
                                                     progress=tick)
            log(logger, "base model fingerprint", fingerprint=self._fingerprint, model_dir=str(self.model_dir))
        return self._fingerprint

    def load_data(self) -> td.TokenDataset:
        """Tokenize this member's training data (and the demo's held-out split when asked)."""
        if self.data is None:
            self._tokenizer = self._tokenizer or load_tokenizer(self.model_dir)
            self.kind = model_kind(load_config(self.model_dir, self.config.model.trust_remote_code)[0])
            d, block = self.config.data, self.config.training.max_seq_len
            if d.path is not None:
                loaded = td.load_records(d.path, self._tokenizer, block, kind=self.kind, settings=d)
                self.data, self.data_stats = loaded.dataset, loaded.stats
            else:
                self.data = td.demo_client_dataset(self._tokenizer, d.demo_client, d.demo_clients, block, kind=self.kind)
                if self.config.client.eval_heldout:
                    self.heldout = td.demo_heldout_dataset(self._tokenizer, d.demo_clients, block, kind=self.kind)
            stats = self.data_stats
            log(logger, "training data loaded", examples=len(self.data), block_size=block, kind=self.kind.value,
                **({"records": stats.records, "truncated": stats.truncated, "answer_lost": stats.answer_lost,
                    "packed": stats.packed, "longest_tokens": stats.longest} if stats else {}))
        return self.data

    def memory_plan(self, lora: LoraSettings) -> MemoryPlan:
        """Physical batch, checkpointing and quantization (and, with ``[capacity] layers = "auto"``, how
        many top layers) for a step of this member's batch (``ConfigError`` naming what would fit when
        nothing does)."""
        t = self.config.training
        return plan_for_checkpoint(self.model_dir, self.config.model, lora, logical_batch=t.batch_size,
                                   seq_len=t.max_seq_len, layers=self.config.capacity.layers)

    def load_global(self, lora: LoraSettings, bundle: Bundle) -> None:
        """The base model with the federation's LoRA settings, its adapter set to ``bundle``;
        ``ConfigError`` when this member would train part of the adapter and the federation's strategy
        (in the bundle's settings, checked at intake) takes whole adapters only."""
        lj = lora.model_dump_json()
        if self._model is None or self._lora_json != lj:
            plan = self.memory_plan(lora)
            loaded, self._partial = load_for_training(self.model_dir, self.config.model, lora, plan,
                                                      self.config.capacity, bundle.layout_json)
            if self._ranks is not None:
                self._ranks.close()
            self._ranks = (RankGroup(self.check_ranks(), model_dir=self.model_dir, model=self.config.model, lora=lora,
                                     plan=plan, capacity=self.config.capacity, layout_json=bundle.layout_json)
                           if self.config.model.processes > 1 else None)
            self._model, self._tokenizer, self._lora_json, self._loaded = loaded.model, loaded.tokenizer, lj, loaded
            self._loss = SequenceLoss(loaded.model, loaded.kind)
            self.plan = plan
            log(logger, "base model loaded", device=loaded.device, dtype=loaded.dtype, quantization=loaded.quantization,
                kind=loaded.kind.value, physical_batch_size=plan.physical_batch_size,
                gradient_checkpointing=plan.gradient_checkpointing, estimated_step_gib=round(plan.estimated_gb, 2),
                max_memory_gb=self.config.model.max_memory_gb, chunked_loss=self._loss.chunked,
                trains=self._partial.capacity.describe(self._partial.groups) if self._partial else "the whole adapter")
        if self._partial is not None and not json.loads(bundle.settings_json)["strategy"].get("heterogeneous"):
            raise ConfigError(f"this member trains {self._partial.capacity.describe(self._partial.groups)} "
                              "([capacity] / its memory plan) and the federation aggregates whole adapters only: the "
                              "operator can set [strategy] heterogeneous = true, or this member can train everything")
        if self._ranks is not None and not self._ranks.up:  # first plan, or the ranks failed in the last attempt
            try:
                self._ranks.start()
            except RankFailed as exc:
                raise ConfigError(f"this member's training ranks did not start: {exc}") from None
        self._set_adapter(bundle)

    def close(self) -> None:
        if self._ranks is not None:
            self._ranks.close()

    def check_ranks(self) -> RankLayout:
        """Where ``[model] processes`` ranks run on this machine (``ConfigError`` when they cannot)."""
        return rank_layout(self.config.model, self.config.training.batch_size)

    def train(self, strategy: Strategy, bundle: Bundle, sigma: float, attempt: int,
              client_state_path: Path, on_step: Callable[[int, int], None] | None = None,
              ) -> tuple[ClientPayload, LocalTrainResult]:
        """One round of DP-SGD from the global adapter; the strategy's payload for the aggregate.
        ``on_step(i, n)`` after each step (the daemon's heartbeat carries it to the server)."""
        data = self.load_data()
        client_state = None
        if strategy.initial_client_state() is not None:
            client_state = (load_vector(client_state_path, bundle.vector.size) if client_state_path.exists()
                            else strategy.initial_client_state())
        hooks = strategy.client_hooks(client_state, bundle.server_state)
        _, steps = plan_steps(self.config.training, len(data))
        physical = self.plan.physical_batch_size if self.plan else None
        part = self._partial

        def progress(i: int, n: int, loss: float) -> None:
            prog.update(1, loss=loss)
            if on_step is not None:
                on_step(i, n)

        with Progress("training", steps, "step", attempt=attempt) as prog:
            kw = dict(strategy_state=part.correction(hooks) if part else hooks, progress=progress,
                      physical_batch_size=physical, loss=self._loss, grad_mask=part.grad_masks() if part else None)
            if self._ranks is not None:
                result = self._ranks.train(self._model, data, self.config.training, sigma, attempt=attempt,
                                           correction=hooks, **kw)
            else:
                result = train_local(self._model, data, self.config.training, sigma, **kw)
        if part is not None:  # the trained part's update in the federation's layout, zeros elsewhere
            result = dataclasses.replace(result, delta=part.embed(result.delta))
        payload = strategy.client_payload(result, client_state=client_state, server_state=bundle.server_state,
                                          trained=part.indicator if part else None)
        log(logger, "local training done", attempt=attempt, steps=result.steps, sample_rate=round(result.sample_rate, 5),
            noise_multiplier=round(result.noise_multiplier, 4), train_loss=round(result.train_loss, 4),
            seconds=round(result.seconds, 2), clipping=result.clipping_mode.value)
        return payload, result

    def evaluate(self, bundle: Bundle) -> float | None:
        """Held-out perplexity of ``bundle`` (demo only: None without a held-out split or a model, or
        when the adapter cannot be evaluated here, which is logged: it never ends a round)."""
        if self.heldout is None or self._model is None:
            return None
        try:
            self._set_adapter(bundle)
            _, ppl = td.evaluate(self._model, self.heldout, max_examples=64, loss=self._loss)
        except (ModelError, InvalidInput) as exc:
            log(logger, "could not evaluate the new global adapter", error=str(exc))
            return None
        return float(ppl) if math.isfinite(ppl) else None

    def export_peft(self, bundle: Bundle, out_dir: Path) -> Path | None:
        """``bundle`` as a PEFT adapter directory (adapter_model.safetensors + adapter_config.json),
        loadable with ``PeftModel.from_pretrained(base, dir)``; None before the model was loaded."""
        if self._model is None:
            return None
        self._set_adapter(bundle)
        return save_peft_dir(self._model, out_dir, base_model_dir=self.model_dir)  # as `securefed export` writes it

    def _set_adapter(self, bundle: Bundle) -> None:
        vec = np.array(bundle.vector, dtype=np.float32)
        if self._partial is not None:
            if bundle.layout_json != self._partial.layout.to_json():
                raise ModelError("the global adapter's layout changed: use the federation's LoRA settings")
            self._partial.load(vec)
        else:
            load_adapter_vector(self._model, vec, AdapterLayout.from_json(bundle.layout_json))
