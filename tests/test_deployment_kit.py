"""The deployment kit as shipped: the systemd units and the example configs agree on where things live
(configuration read-only in /etc/securefed, state under /var/lib/securefed), the member bundle holds what
a member needs with the right modes, and the README's command table lists every command."""

from __future__ import annotations

import argparse
import stat
import tarfile
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from securefed import cli
from securefed.client.config import ClientConfig
from securefed.client.dataset import ledger_dir
from securefed.config import parse_model
from securefed.server.config import ServerConfig
from securefed.transport import identity, member_kit, revocation

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "clients"


def unit(path: Path) -> dict[str, list[str]]:
    """The [Service] keys of a systemd unit (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def _under(p: Path, roots: list[str]) -> bool:
    return any(PurePosixPath(p).is_relative_to(r) for r in roots)


def _config_path(u: dict[str, list[str]]) -> PurePosixPath:
    argv = u["ExecStart"][0].split()
    return PurePosixPath(argv[argv.index("--config") + 1])


def check_paths(u: dict[str, list[str]], writes: list[Path], reads: list[Path]) -> list[str]:
    """What would break under this unit: a path the daemon writes that is not writable, one it reads
    that it cannot see, a working directory or config outside the paths it is given."""
    rw = [x for v in u.get("ReadWritePaths", []) for x in v.split()]
    ro = [x for v in u.get("ReadOnlyPaths", []) for x in v.split()]
    problems = [f"writes {p}, not under ReadWritePaths {rw}" for p in writes if not _under(p, rw) or _under(p, ro)]
    problems += [f"reads {p}, outside {ro + rw}" for p in reads if not _under(p, ro + rw)]
    if not _under(Path(u["WorkingDirectory"][0]), rw):
        problems.append(f"WorkingDirectory {u['WorkingDirectory'][0]} is not writable")
    if not _under(Path(_config_path(u)).parent, ro):
        problems.append(f"config {_config_path(u)} is not under ReadOnlyPaths")
    if u.get("ProtectSystem") != ["strict"]:
        problems.append("ProtectSystem=strict expected (everything else read-only)")
    return problems


def client_paths(text: str, config_dir: PurePosixPath) -> tuple[list[Path], list[Path]]:
    cfg = parse_model(ClientConfig, tomllib.loads(text)).resolve_paths(Path(config_dir))
    c = cfg.client
    writes = [c.state_dir, ledger_dir(cfg)]
    reads = [c.credentials_dir, c.base_model_dir, *([cfg.data.path] if cfg.data.path else []),
             *([c.ckks_secret_context] if c.ckks_secret_context else [])]
    return writes, reads


def server_paths(text: str, config_dir: PurePosixPath) -> tuple[list[Path], list[Path]]:
    cfg = parse_model(ServerConfig, tomllib.loads(text)).resolve_paths(Path(config_dir))
    s = cfg.server
    return [s.state_dir, cfg.checkpoint_dir], [s.credentials_dir, s.base_model_dir,
                                               *([s.ckks_public_context] if s.ckks_public_context else [])]


def test_client_unit_and_example_config_agree():
    u = unit(KIT / "securefed-client.service")
    assert _config_path(u) == PurePosixPath("/etc/securefed/client.toml")
    writes, reads = client_paths((KIT / "client.toml").read_text(), _config_path(u).parent)
    assert check_paths(u, writes, reads) == []
    assert u["User"] == ["securefed"] and "RestartPreventExitStatus" in u


def test_server_unit_and_example_config_agree():
    u = unit(KIT / "securefed-server.service")
    assert _config_path(u) == PurePosixPath("/etc/securefed/server.toml")
    text = (KIT / "server.toml").read_text()
    parse_model(ServerConfig, tomllib.loads(text)).check_safety("clients/server.toml")
    writes, reads = server_paths(text, _config_path(u).parent)
    assert check_paths(u, writes, reads) == []


def test_the_check_catches_state_next_to_a_read_only_config():
    # Negative control: what the kit shipped before (relative state_dir) lands in read-only /etc/securefed.
    u = unit(KIT / "securefed-client.service")
    old = (KIT / "client.toml").read_text().replace('"/var/lib/securefed/state"', '"state"')
    writes, reads = client_paths(old, PurePosixPath("/etc/securefed"))
    problems = check_paths(u, writes, reads)
    assert any("/etc/securefed/state" in p for p in problems)


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    identity.init_ca(d)
    identity.issue_server(d, ["fl.example.org"])
    identity.issue_client(d, "hospital-a")
    identity.issue_client(d, "bank-b")
    return d


def test_bundle_holds_what_a_member_needs_with_the_right_modes(pki: Path, tmp_path: Path):
    revocation.revoke(pki, ["bank-b"])
    secret = tmp_path / "federation.secret.ctx"
    secret.write_bytes(b"secret context bytes")
    out = tmp_path / "member-hospital-a.tar"
    assert cli.main(["keys", "bundle", "hospital-a", "--dir", str(pki), "--server", "fl.example.org:50051",
                     "--ckks-secret", str(secret), "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds private keys
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        top = "member-hospital-a"
        want = {f"{top}/client.toml": 0o644, f"{top}/pki/ca.pem": 0o644, f"{top}/pki/crl.pem": 0o644,
                f"{top}/pki/clients/hospital-a.pem": 0o644, f"{top}/pki/clients/hospital-a.key": 0o600,
                f"{top}/pki/clients/hospital-a.identity.key": 0o600, f"{top}/ckks/federation.secret.ctx": 0o600}
        assert {n: m.mode for n, m in members.items() if m.isfile()} == want
        dest = tmp_path / "etc"
        tar.extractall(dest, filter="data")
    member = dest / top
    assert (member / "ckks" / "federation.secret.ctx").read_bytes() == b"secret context bytes"
    # The extracted credentials load (the keys' 0600 survives extraction) and name the member.
    creds = identity.load_client_credentials(member / "pki", "hospital-a")
    assert creds.name == "hospital-a"
    text = (member / "client.toml").read_text()
    cfg = parse_model(ClientConfig, tomllib.loads(text))
    assert (cfg.client.name, cfg.client.server) == ("hospital-a", "fl.example.org:50051")
    assert cfg.client.ckks_secret_context is not None
    # Extracted into /etc/securefed as the guide says, it fits the shipped unit.
    u = unit(KIT / "securefed-client.service")
    writes, reads = client_paths(text, PurePosixPath("/etc/securefed"))
    assert check_paths(u, writes, reads) == []


def test_bundle_refuses_a_revoked_member_and_bad_input(pki: Path, tmp_path: Path, capsys):
    revocation.revoke(pki, ["bank-b"])
    assert cli.main(["keys", "bundle", "bank-b", "--dir", str(pki), "--server", "fl.example.org:50051",
                     "--out", str(tmp_path / "b.tar")]) == 2
    assert "revoked" in capsys.readouterr().err and not (tmp_path / "b.tar").exists()
    assert cli.main(["keys", "bundle", "hospital-a", "--dir", str(pki), "--server", "fl.example.org",
                     "--out", str(tmp_path / "a.tar")]) == 2
    assert "host:port" in capsys.readouterr().err
    assert cli.main(["keys", "bundle", "carol", "--dir", str(pki), "--server", "h:1", "--out", str(tmp_path / "c.tar")]) == 2
    assert "issue-client carol" in capsys.readouterr().err


def test_bundle_for_a_trial_in_a_folder(pki: Path):
    text = member_kit.client_toml("hospital-a", "127.0.0.1:50551", state_root=".")
    cfg = parse_model(ClientConfig, tomllib.loads(text)).resolve_paths(Path("/trial/member-a"))
    assert cfg.client.state_dir == Path("/trial/member-a/state") and ledger_dir(cfg) == Path("/trial/member-a/ledgers")


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                nested = _commands(sub, (*prefix, name))
                out += nested or [" ".join((*prefix, name))]
    return out


def test_readme_command_table_lists_every_command():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## The command line"): readme.index("## Where things are")]
    commands = _commands(cli.build_parser())
    assert len(commands) >= 18
    missing = [c for c in commands if f"securefed {c}" not in table]
    assert not missing, f"README command table lacks: {missing}"
