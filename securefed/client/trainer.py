"""The member's local model work: base model + LoRA, its private data, DP-SGD rounds, evaluation, export.

Loading is lazy and done once: the tokenizer and data at start-up (so the budget can be planned),
the model with the federation's LoRA settings at the first plan (reloaded only if those change).
Everything here runs on the member's own data and never talks to the network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from securefed.client.config import ClientConfig
from securefed.client.progress import Progress
from securefed.logs import get_logger, log
from securefed.protocol.bundle import Bundle
from securefed.strategies.base import ClientPayload, Strategy, load_vector
from securefed.training import data as td
from securefed.training.adapter import AdapterLayout, load_adapter_vector
from securefed.training.config import LoraSettings
from securefed.training.dp import LocalTrainResult, plan_steps, train_local
from securefed.training.model import load_model, load_tokenizer

logger = get_logger("client.trainer")


class Trainer:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._model = None
        self._tokenizer = None
        self._lora_json: str | None = None
        self.data: td.TokenDataset | None = None
        self.heldout: td.TokenDataset | None = None

    @property
    def dataset_size(self) -> int:
        return len(self.load_data())

    def load_data(self) -> td.TokenDataset:
        """Tokenize this member's training data (and the demo's held-out split when asked)."""
        if self.data is None:
            self._tokenizer = self._tokenizer or load_tokenizer(self.config.client.base_model_dir)
            d, block = self.config.data, self.config.training.max_seq_len
            if d.path is not None:
                self.data = td.load_jsonl(d.path, self._tokenizer, block)
            else:
                self.data = td.demo_client_dataset(self._tokenizer, d.demo_client, d.demo_clients, block)
                if self.config.client.eval_heldout:
                    self.heldout = td.demo_heldout_dataset(self._tokenizer, d.demo_clients, block)
            log(logger, "training data loaded", examples=len(self.data), block_size=block)
        return self.data

    def load_global(self, lora: LoraSettings, bundle: Bundle) -> None:
        """The base model with the federation's LoRA settings, its adapter set to ``bundle``."""
        lj = lora.model_dump_json()
        if self._model is None or self._lora_json != lj:
            loaded = load_model(self.config.client.base_model_dir, lora=lora)
            self._model, self._tokenizer, self._lora_json = loaded.model, loaded.tokenizer, lj
        self._set_adapter(bundle)

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
        def progress(i: int, n: int, loss: float) -> None:
            prog.update(1, loss=loss)
            if on_step is not None:
                on_step(i, n)

        with Progress("training", steps, "step", attempt=attempt) as prog:
            result = train_local(self._model, data, self.config.training, sigma, strategy_state=hooks,
                                 progress=progress)
        payload = strategy.client_payload(result, client_state=client_state, server_state=bundle.server_state)
        log(logger, "local training done", attempt=attempt, steps=result.steps, sample_rate=round(result.sample_rate, 5),
            noise_multiplier=round(result.noise_multiplier, 4), train_loss=round(result.train_loss, 4),
            seconds=round(result.seconds, 2), clipping=result.clipping_mode.value)
        return payload, result

    def evaluate(self, bundle: Bundle) -> float | None:
        """Held-out perplexity of ``bundle`` (demo only: None without a held-out split or a model)."""
        if self.heldout is None or self._model is None:
            return None
        self._set_adapter(bundle)
        _, ppl = td.evaluate(self._model, self.heldout, max_examples=64)
        return float(ppl)

    def export_peft(self, bundle: Bundle, out_dir: Path) -> Path | None:
        """``bundle`` as a PEFT adapter directory (adapter_model.safetensors + adapter_config.json),
        loadable with ``PeftModel.from_pretrained(base, dir)``; None before the model was loaded."""
        if self._model is None:
            return None
        self._set_adapter(bundle)
        self._model.save_pretrained(str(out_dir))
        return out_dir

    def _set_adapter(self, bundle: Bundle) -> None:
        load_adapter_vector(self._model, np.array(bundle.vector, dtype=np.float32), AdapterLayout.from_json(bundle.layout_json))
