"""``securefed client --config F --check``: everything about a member that can be validated offline.

In order: the config file; the server address (a port to dial); credentials (the CA, this member's
certificate, TLS key and identity key, cross-checked, and their validity dates); the state directory;
an existing ledger (its chain verifies; what it has spent); the CKKS secret context when set; the
base model's tokenizer; the training data (tokenized: the dataset size N); and the budget: delta
below 1/N, a noise level that fits the target and the per-round cap over the planned rounds, and
whether the ledger still allows a round. Nothing is written and nothing is dialled.
"""

from __future__ import annotations

import stat
from pathlib import Path

from securefed.client.budget import check_feasible, small_data_warning
from securefed.client.config import ClientConfig, load_client_config
from securefed.client.dataset import existing_member_dataset, ledger_dir
from securefed.client.trainer import Trainer
from securefed.errors import SecureFedError
from securefed.preflight import Checks, certificate_validity, writable_dir
from securefed.privacy.accountants import compute_epsilon
from securefed.privacy.dataset import find_ledgers
from securefed.privacy.ledger import budget_changed_message, load_ledger
from securefed.training.dp import plan_steps
from securefed.transport import identity as tid


def check_client(config_path: str | Path) -> Checks:
    checks = Checks()
    cfg: ClientConfig | None = checks.run("config", lambda: load_client_config(config_path))  # type: ignore[assignment]
    if cfg is None:
        return checks
    c = cfg.client
    checks.ok("config", f"{config_path}: member {c.name!r}, server {c.server}")
    if c.server.endswith(":0"):
        checks.fail("server", f"client.server {c.server!r}: port 0 cannot be dialled; set the server's port")
    creds = checks.run("credentials", lambda: tid.load_client_credentials(c.credentials_dir, c.name))
    if creds is not None:
        checks.ok("credentials", f"{c.credentials_dir}: CA, certificate, TLS key and identity key of {c.name} match")
        certificate_validity(checks, "federation CA certificate", creds.ca_pem)
        certificate_validity(checks, "member certificate", creds.certificate_pem)
    writable_dir(checks, "state_dir", c.state_dir)
    identity = None if creds is None else creds.identity_key.public_key().public_bytes_raw()
    prior = _ledger(checks, cfg, identity)
    if c.ckks_secret_context is not None:
        _secret_context(checks, c.ckks_secret_context)
    trainer = Trainer(cfg)
    ranks = checks.run("processes", trainer.check_ranks)
    if ranks is not None and ranks.processes > 1:
        checks.ok("processes", ranks.describe())
    data = checks.run("model and data", trainer.load_data)
    if data is None:
        return checks
    n = len(data)
    checks.ok("model and data", f"tokenizer from {c.base_model_dir}; {n} training examples of "
              f"{cfg.training.max_seq_len} tokens from {cfg.data.path or 'the built-in demo split'}")
    stats = trainer.data_stats
    if stats is not None:
        line = checks.warn if stats.truncated else checks.ok
        line("records", stats.summary() + (f"; raise training.max_seq_len to {stats.longest} to keep them whole"
                                           if stats.truncated else ""))
    before = len(checks.items)
    sigma = checks.run("privacy budget", lambda: check_feasible(cfg, n))
    if len(checks.items) == before:  # no FAIL line: feasible
        _budget_line(checks, cfg, n, sigma, prior)
    return checks


def _ledger(checks: Checks, cfg: ClientConfig, identity_public: bytes | None) -> list | None:
    """The ledger(s) that account for this member's data, verified, and what they spent; None when one
    failed. The daemon's own lookup (``ledger_path``, or the dataset's ledgers in ``ledger_dir``), read-only."""
    if cfg.ledger_path is not None:
        path = cfg.ledger_path
        if not path.exists():
            checks.ok("ledger", f"{path} will be created (nothing spent yet)")
            return []
        ledger = checks.run("ledger", lambda: load_ledger(path))
        return None if ledger is None else _own_ledger(checks, cfg, path, ledger, [])
    where = ledger_dir(cfg)
    try:
        dataset = existing_member_dataset(cfg)
    except SecureFedError:  # the data itself is checked (and its error shown) below
        checks.warn("ledger", f"{where}: which ledger accounts for this data is known once the data loads (see below)")
        return []
    if dataset is None:
        checks.ok("ledger", f"{where}: no ledger of this data yet (the first round creates one; nothing spent)")
        return []
    if identity_public is None:
        return None  # the credentials check failed: it says why
    found = checks.run("ledger", lambda: find_ledgers(where, dataset.fingerprint, identity_public))
    if found is None:
        return None
    mine, others = found
    earlier = [e for _, led in others for e in led.events]
    if mine is None:
        note = f"; {len(others)} earlier ledger(s) of this data count towards it" if others else ""
        checks.ok("ledger", f"{where}: this data's ledger will be created{note}")
        return earlier
    ledger = checks.run("ledger", lambda: load_ledger(mine))
    return None if ledger is None else _own_ledger(checks, cfg, mine, ledger, earlier)


def _own_ledger(checks: Checks, cfg: ClientConfig, path: Path, ledger, earlier: list) -> list | None:
    h = ledger.header
    events = earlier + list(ledger.events)
    spent = compute_epsilon(events, h.budget.delta, h.budget.accountant) if events else 0.0
    if h.client_id != cfg.client.name:
        checks.fail("ledger", f"{path} belongs to member {h.client_id!r}, not {cfg.client.name!r}")
    elif h.budget != cfg.privacy:
        checks.fail("ledger", budget_changed_message(path, h.budget, cfg.privacy, spent))
    else:
        more = f" (with {len(earlier)} entries of earlier ledgers of this data)" if earlier else ""
        checks.ok("ledger", f"{path}: {len(ledger.events)} entries, chain verified, epsilon {spent:.4g} of "
                  f"{h.budget.target_epsilon:g} spent{more}")
        return events
    return None


def _secret_context(checks: Checks, path: Path) -> None:
    try:
        st = path.stat()
        size = st.st_size
        path.open("rb").close()
    except OSError as exc:
        checks.fail("ckks secret context", f"{path}: {exc.strerror}")
        return
    if size == 0:
        checks.fail("ckks secret context", f"{path} is empty")
    elif st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        checks.warn("ckks secret context", f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}): chmod 600")
    else:
        checks.ok("ckks secret context", f"{path} ({size} bytes, mode 600)")


def _budget_line(checks: Checks, cfg: ClientConfig, n: int, sigma: float | None, prior: list | None) -> None:
    t, b, c = cfg.training, cfg.privacy, cfg.client
    q, steps = plan_steps(t, n)
    cap = f", at most {b.per_round_epsilon:g} a round" if b.per_round_epsilon is not None else ""
    how = (f"noise multiplier {sigma:.4g} calibrated for {c.planned_rounds} rounds" if sigma is not None
           else f"noise multiplier {t.noise_multiplier:g} (fixed)")
    checks.ok("privacy budget", f"delta {b.delta:g} < 1/N = {1 / n:.3g}; {how} of {steps} steps at sample rate "
              f"{q:.4g} within target epsilon {b.target_epsilon:g}{cap} ({b.accountant.value})")
    small = small_data_warning(n, q)
    if small is not None:
        checks.warn("data size", small)
    if prior and t.noise_multiplier is None and len(prior) >= c.planned_rounds:
        what = "stops joining" if c.after_planned_rounds == "stop" else "goes on with ever more noise"
        checks.warn("planned rounds", f"the ledger holds {len(prior)} releases of client.planned_rounds = "
                    f"{c.planned_rounds}: this member {what} (client.after_planned_rounds)")
    elif prior:
        spent = compute_epsilon(prior, b.delta, b.accountant)
        if spent >= b.target_epsilon:
            checks.warn("privacy budget", f"spent: epsilon {spent:.4g} of {b.target_epsilon:g}; this member will "
                        "decline every round")
