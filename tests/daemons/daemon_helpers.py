"""Helpers shared by the daemon tests (imported as a plain module: tests/ has no packages)."""

from __future__ import annotations

import socket

# Fast but real: DP-SGD with Opacus on the tiny model, 2 steps a round, short stage deadlines.
FAST_CLIENT = {
    # Noise is calibrated once for planned_rounds releases; crash and abort tests re-run rounds.
    "client": {"planned_rounds": 4},
    "training": {"steps": 2, "batch_size": 8, "max_seq_len": 32, "learning_rate": 0.5, "clipping": "hooks"},
    "connection": {"poll_wait_s": 1.0, "backoff_initial_s": 0.2, "backoff_max_s": 1.0, "give_up_after_s": 90.0},
}


def fast_server(**deadlines) -> dict:
    # Stages end as soon as everyone answered; generous deadlines only matter on a loaded machine.
    d = {"join_s": 90.0, "training_s": 90.0, "share_keys_s": 15.0, "masked_input_s": 15.0, "unmask_s": 15.0,
         "decrypt_s": 20.0, "poll_s": 1.0}
    d.update(deadlines)
    return {"deadlines": d}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
