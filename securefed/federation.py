"""Provision and run a whole federation on one machine (127.0.0.1 only).

Used by ``securefed demo`` (which runs server and clients as separate processes from the configs
written here), by the daemon tests (in-process: threads, real gRPC, real mutual TLS) and by
``bench/round.py``. Nothing here is a shortcut around the daemons: the same ``ServerApp`` and
``ClientDaemon`` run, configured by the same TOML files an operator writes.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefed import he
from securefed.client.config import ClientConfig, load_client_config
from securefed.client.daemon import ClientDaemon
from securefed.errors import ConfigError
from securefed.secagg.params import suggest_threshold
from securefed.server.app import ServerApp
from securefed.server.config import ServerConfig, load_server_config
from securefed.server.ending import FINAL_ENDINGS
from securefed.training.preset import PRESET_MARKER, build_tiny_model
from securefed.transport import identity as tid


@dataclass
class Provisioned:
    root: Path
    pki: Path
    model_dir: Path
    server_toml: Path
    client_tomls: dict[str, Path]
    ckks_secret: Path | None = None
    ckks_public: Path | None = None


def client_names(n: int) -> list[str]:
    return [f"member-{i + 1}" for i in range(n)]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for name, body in sections.items():
        body = {k: v for k, v in body.items() if v is not None}
        if not body:
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def ensure_tiny_model(model_dir: Path) -> Path:
    """The preset model in ``model_dir``: reused if the directory holds it, built if the directory is
    absent or empty; anything else (a user's checkpoint, other files) is refused, never replaced."""
    model_dir = Path(model_dir)
    if (model_dir / PRESET_MARKER).is_file():
        return model_dir
    if model_dir.exists() and (not model_dir.is_dir() or any(model_dir.iterdir())):
        raise ConfigError(f"{model_dir}: exists and is not the securefed preset model; not touching it "
                          "(use it as the federation's model, or choose another directory)")
    build_tiny_model(model_dir)
    return model_dir


def check_model_dir(model_dir: Path) -> Path:
    """A user's checkpoint directory, used read-only: it must look like a save_pretrained directory."""
    model_dir = Path(model_dir).resolve()
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir}: model directory not found")
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir}: no config.json; point --model at a save_pretrained directory")
    return model_dir


def provision(
    root: str | Path,
    n_clients: int = 3,
    *,
    mode: str = "secagg",
    rounds: int = 3,
    threshold: int | None = None,
    min_clients: int | None = None,
    model_dir: Path | None = None,
    address: str = "127.0.0.1:0",
    server: dict[str, dict[str, Any]] | None = None,
    client: dict[str, dict[str, Any]] | None = None,
    per_client: dict[str, dict[str, dict[str, Any]]] | None = None,
    target_epsilon: float = 8.0,
) -> Provisioned:
    """CA + certificates, the model, CKKS contexts (mode ckks), and one TOML per party.

    ``model_dir``: a checkpoint to federate, used read-only (nothing is ever written into, replaced in
    or deleted from it); without it the tiny preset is built under ``root``. ``server``/``client``/
    ``per_client`` override TOML sections (``{"federation": {"rounds": 5}}``). ``threshold``: by default
    the smallest that holds against one colluding member (``suggest_threshold``; all of 3 members).
    """
    if threshold is None:
        threshold = suggest_threshold(n_clients) if n_clients > 2 else n_clients
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pki = root / "pki"
    if not (pki / "ca.pem").exists():
        tid.init_ca(pki)
        tid.issue_server(pki, ["127.0.0.1", "localhost"])
    names = client_names(n_clients)
    for n in names:
        if not (pki / "clients" / f"{n}.pem").exists():
            tid.issue_client(pki, n)
    model_dir = check_model_dir(model_dir) if model_dir else ensure_tiny_model(root / "model")
    ckks_secret = ckks_public = None
    if mode == "ckks":
        ckks_secret, ckks_public = root / "ckks" / "federation.secret.ctx", root / "ckks" / "federation.public.ctx"
        if not ckks_secret.exists():
            ctx = he.generate_client_context(he.DEFAULT_PARAMS_NAME)
            ckks_secret.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(ckks_secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(ctx.serialize_secret())
            ckks_public.write_bytes(ctx.public_bytes())
    sections: dict[str, dict[str, Any]] = {
        "server": {"address": address, "credentials_dir": str(pki), "state_dir": str(root / "server-state"),
                   "base_model_dir": str(model_dir), "ckks_public_context": str(ckks_public) if ckks_public else None},
        "federation": {"rounds": rounds, "cohort_size": n_clients, "min_clients": min_clients or n_clients,
                       "threshold": threshold, "mode": mode,
                       "allow_plaintext_for_debugging": True if mode == "plaintext" else None},
        "strategy": {"kind": "fedavg", "max_samples": 1000, "delta_bound": 1.0},
        "lora": {"rank": 4, "alpha": 8.0, "target_modules": "auto"},
        "deadlines": {"join_s": 120.0, "training_s": 120.0, "share_keys_s": 30.0, "masked_input_s": 30.0,
                      "unmask_s": 30.0, "decrypt_s": 60.0, "poll_s": 2.0},
    }
    for k, v in (server or {}).items():
        sections.setdefault(k, {}).update(v)
    server_toml = write_toml(root / "server.toml", sections)
    tomls: dict[str, Path] = {}
    for i, n in enumerate(names):
        cs: dict[str, dict[str, Any]] = {
            "client": {"name": n, "server": "127.0.0.1:0", "credentials_dir": str(pki),
                       "state_dir": str(root / "clients" / n), "base_model_dir": str(model_dir),
                       # one file per member, in its own state: tests and the demo never touch ~/.local
                       "ledger_path": str(root / "clients" / n / "ledger.sqlite"),
                       "ckks_secret_context": str(ckks_secret) if ckks_secret else None, "planned_rounds": rounds,
                       "allow_plaintext_for_debugging": True if mode == "plaintext" else None},
            "data": {"demo_client": i, "demo_clients": n_clients},
            "privacy": {"target_epsilon": target_epsilon, "delta": 1e-5},
            "training": {"learning_rate": 0.05, "batch_size": 8, "steps": 4, "max_seq_len": 32, "clip_norm": 1.0,
                         "clipping": "hooks"},
            "connection": {"poll_wait_s": 2.0, "backoff_initial_s": 0.2, "backoff_max_s": 2.0, "give_up_after_s": 90.0},
        }
        for k, v in (client or {}).items():
            cs.setdefault(k, {}).update(v)
        for k, v in ((per_client or {}).get(n) or {}).items():
            cs.setdefault(k, {}).update(v)
        tomls[n] = write_toml(root / "clients" / f"{n}.toml", cs)
    return Provisioned(root, pki, model_dir, server_toml, tomls, ckks_secret, ckks_public)


def set_client_server(path: Path, address: str) -> None:
    """Point a provisioned client.toml at the server's actual address (after binding port 0)."""
    text = path.read_text().replace('server = "127.0.0.1:0"', f'server = "{address}"')
    path.write_text(text)


@dataclass
class FederationResult:
    ok: bool
    seconds: float
    server: Any
    clients: dict[str, Any]
    client_exit: dict[str, int | None] = field(default_factory=dict)


@dataclass
class ClientThreads:
    daemons: dict[str, Any]
    threads: dict[str, threading.Thread]
    exits: dict[str, int | None]
    stop: threading.Event

    def join(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        for th in self.threads.values():
            th.join(max(0.1, end - time.monotonic()))
        return not any(th.is_alive() for th in self.threads.values())

    def shutdown(self) -> None:
        self.stop.set()
        self.join(15.0)


def start_clients(p: Provisioned, address: str, *, names: list[str] | None = None,
                  hooks: dict[str, Any] | None = None) -> ClientThreads:
    """Client daemons as threads of this process, dialling ``address`` over mutual TLS.

    ``hooks`` maps a member's name to the ``client.hooks.MemberHooks`` it runs with (tests watch
    members through them)."""
    stop = threading.Event()
    out = ClientThreads({}, {}, {}, stop)
    for name, toml in p.client_tomls.items():
        if names is not None and name not in names:
            continue
        ccfg: ClientConfig = load_client_config(toml)
        ccfg = ccfg.model_copy(update={"client": ccfg.client.model_copy(update={"server": address})})
        d = ClientDaemon(ccfg, hooks=(hooks or {}).get(name), stop=stop)
        out.daemons[name] = d

        def _run(d=d, name=name) -> None:
            try:
                out.exits[name] = d.run()
            finally:
                d.close()

        th = threading.Thread(target=_run, name=f"client-{name}", daemon=True)
        out.threads[name] = th
        th.start()
    return out


def run_in_process(p: Provisioned, *, hooks: dict[str, Any] | None = None, timeout_s: float = 300.0,
                   server_config: ServerConfig | None = None) -> FederationResult:
    """Server and clients as threads of this process (real gRPC over mutual TLS on 127.0.0.1)."""
    cfg = server_config or load_server_config(p.server_toml)
    app = ServerApp(cfg)
    port = app.start()
    t0 = time.monotonic()
    clients = start_clients(p, f"127.0.0.1:{port}", hooks=hooks)
    result: dict[str, bool] = {}
    try:
        st = threading.Thread(target=lambda: result.setdefault("ok", app.run()), daemon=True)
        st.start()
        st.join(timeout_s)
        if st.is_alive():
            app.coordinator.stop()
            st.join(10)
        app.coordinator.linger(10.0)
        if app.coordinator.ending not in FINAL_ENDINGS:  # no signed end: members would wait for a restart
            clients.shutdown()
        clients.join(max(1.0, timeout_s - (time.monotonic() - t0)))
    finally:
        clients.shutdown()
        app.stop(grace=0.5)
    return FederationResult(result.get("ok", False), time.monotonic() - t0, app, clients.daemons, clients.exits)
