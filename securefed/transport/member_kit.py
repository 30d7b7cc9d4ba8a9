"""One file per member: ``securefed keys bundle NAME --out member-NAME.tar``.

The operator hands a member one tar archive instead of five files and a page of instructions::

    member-NAME/client.toml                    name and server address filled in, paths ready for
                                               /etc/securefed + /var/lib/securefed (or --state-root)
    member-NAME/pki/ca.pem                     the federation CA the member pins
    member-NAME/pki/crl.pem                    the CA-signed revocation list, when there is one
    member-NAME/pki/clients/NAME.pem           the member's certificate
    member-NAME/pki/clients/NAME.key           its TLS key (0600)
    member-NAME/pki/clients/NAME.identity.key  its Ed25519 identity key (0600)
    member-NAME/ckks/federation.secret.ctx     mode ckks only: the members' shared secret context (0600)

The archive itself is written 0600: it holds private keys, so it travels like one. Members extract
it with ``tar -xf`` (modes are kept) and start from ``clients/README.md`` section 2.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path, PurePosixPath

from cryptography import x509

from securefed.errors import ConfigError
from securefed.fsutil import atomic_write
from securefed.transport import identity as tid
from securefed.transport.revocation import CRL_FILE, load_list

DEFAULT_STATE_ROOT = "/var/lib/securefed"


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_address(server: str) -> str:
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--server {server!r}: give host:port, e.g. fl.example.org:50051")
    return server


def client_toml(name: str, server: str, *, server_name: str | None = None, state_root: str = DEFAULT_STATE_ROOT,
                ckks: bool = False) -> str:
    """The member's ``client.toml``: what this federation fixes, filled in; what the member decides,
    marked. Keys not written take the defaults documented in the annotated ``clients/client.toml``."""
    def under(p: str) -> str:
        return _toml_str(str(PurePosixPath(state_root) / p))

    ckks_line = ('ckks_secret_context = "ckks/federation.secret.ctx"   # the members\' shared secret: never '
                 "give it to the server" if ckks else
                 '# ckks_secret_context = "ckks/federation.secret.ctx"  # only if the federation runs mode ckks')
    sn_line = (f"server_name = {_toml_str(server_name)}" if server_name else
               "# server_name = \"fl.example.org\"   # only if you dial an address the server certificate does not name")
    where = ("state, ledgers, model and data are absolute so that the\n# configuration can live read-only in "
             "/etc/securefed." if PurePosixPath(state_root).is_absolute() else
             f"state, ledgers, model and data are under {state_root!r}\n# (--state-root), relative too: a trial "
             "on one machine; a service keeps them absolute.")
    return f"""# securefed member configuration for {name}, made by `securefed keys bundle`.
# Run: securefed client --config client.toml   (systemd: clients/securefed-client.service)
# Relative paths are relative to THIS file; {where} Every key is explained in clients/client.toml.

[client]
name = {_toml_str(name)}
server = {_toml_str(server)}
{sn_line}
credentials_dir = "pki"
state_dir = {under("state")}
ledger_dir = {under("ledgers")}   # ONE directory for every federation this data joins: the budget is per dataset
base_model_dir = {under("models/base")}   # the federation's base model (a local Hugging Face directory)
{ckks_line}

[data]
path = {under("data/train.jsonl")}   # one JSON object per line: {{"text": ...}} or {{"instruction": ..., "response": ...}}

[privacy]                  # YOUR budget, enforced by this client: decide it before the first round
target_epsilon = 8.0
delta = 1e-6               # must be below 1 / (number of training examples)
"""


def _add(tar: tarfile.TarFile, arcname: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _dir(tar: tarfile.TarFile, arcname: str, mode: int = 0o700) -> None:
    info = tarfile.TarInfo(arcname)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
    tar.addfile(info)


def build_bundle(directory: str | os.PathLike[str], name: str, out: str | os.PathLike[str], *, server: str,
                 server_name: str | None = None, ckks_secret: str | os.PathLike[str] | None = None,
                 state_root: str = DEFAULT_STATE_ROOT, force: bool = False) -> Path:
    """Write ``out`` (a tar archive, mode 0600) holding everything member ``name`` needs."""
    d = tid.CredentialsDir(Path(directory))
    tid.validate_client_name(name)
    _check_address(server)
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists (pass --force to replace it)")
    creds = tid.load_client_credentials(d, name)  # cross-checks certificate, keys and identity binding
    crl = load_list(d.root / CRL_FILE, tid.load_ca(d).certificate)
    if crl is not None and crl.revokes(x509.load_pem_x509_certificate(creds.certificate_pem)):
        raise ConfigError(f"{name}'s certificate is revoked ({crl.describe()}); issue a new one first: "
                          f"securefed keys issue-client {name} --dir {d.root} --force")
    secret = None
    if ckks_secret is not None:
        p = Path(ckks_secret)
        try:
            secret = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"--ckks-secret {p}: cannot read it ({exc.strerror})") from None
    top = f"member-{name}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sub in ("", "/pki", "/pki/clients") + (("/ckks",) if secret is not None else ()):
            _dir(tar, top + sub)
        _add(tar, f"{top}/client.toml", client_toml(name, server, server_name=server_name, state_root=state_root,
                                                     ckks=secret is not None).encode(), 0o644)
        _add(tar, f"{top}/pki/{tid.CA_FILE}", creds.ca_pem, 0o644)
        if crl is not None:
            _add(tar, f"{top}/pki/{CRL_FILE}", crl.pem, 0o644)
        _add(tar, f"{top}/pki/clients/{name}.pem", creds.certificate_pem, 0o644)
        _add(tar, f"{top}/pki/clients/{name}.key", d.client_key(name).read_bytes(), 0o600)
        _add(tar, f"{top}/pki/clients/{name}.identity.key", d.client_identity_key(name).read_bytes(), 0o600)
        if secret is not None:
            _add(tar, f"{top}/ckks/federation.secret.ctx", secret, 0o600)
    atomic_write(out, buf.getvalue(), mode=0o600)
    return out
