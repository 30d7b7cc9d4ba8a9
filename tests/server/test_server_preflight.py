"""``securefed server --check``, addresses with their port, and certificate validity (offline checks)."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from securefed.cli import main
from securefed.config import check_address, parse_model
from securefed.errors import ConfigError
from securefed.federation import provision, write_toml
from securefed.preflight import Checks, certificate_validity
from securefed.server.config import ServerConfig
from securefed.transport import identity as tid


@pytest.mark.parametrize("addr", ["127.0.0.1", "fl.example.org", "", "::1", "host:https", "host:70000"])
def test_an_address_without_a_usable_port_is_refused(addr):
    with pytest.raises(ValueError) as exc:
        check_address(addr)
    assert "port" in str(exc.value) or "brackets" in str(exc.value)


@pytest.mark.parametrize("addr", ["127.0.0.1:50051", "fl.example.org:443", "[::1]:50051"])
def test_an_address_with_its_port_is_taken(addr):
    assert check_address(addr) == addr


def test_the_server_config_refuses_an_address_without_a_port_naming_the_key(tmp_path):
    base = {"credentials_dir": "pki", "state_dir": "s", "base_model_dir": "m"}
    with pytest.raises(ConfigError, match=r"server.toml: server.address: .*'127.0.0.1' has no port.*443"):
        parse_model(ServerConfig, {"server": {**base, "address": "127.0.0.1"}}, "server.toml")
    assert parse_model(ServerConfig, {"server": {**base, "address": "127.0.0.1:0"}}).server.address.endswith(":0")


def test_certificate_validity_fails_expired_and_not_yet_valid_and_warns_before_expiry():
    ca = tid.create_ca()
    cert, _ = ca.issue_server(["127.0.0.1"])
    pem = cert.public_bytes(serialization.Encoding.PEM)
    end = cert.not_valid_after_utc
    checks = Checks()
    certificate_validity(checks, "now", pem)
    certificate_validity(checks, "soon", pem, now=end - dt.timedelta(days=5))
    certificate_validity(checks, "expired", pem, now=end + dt.timedelta(seconds=1))
    certificate_validity(checks, "early", pem, now=cert.not_valid_before_utc - dt.timedelta(days=1))
    got = {c.name: (c.status, c.detail) for c in checks.items}
    assert got["now"][0] == "ok" and got["soon"][0] == "warn" and "in 5 days" in got["soon"][1]
    assert got["expired"][0] == "FAIL" and "expired on" in got["expired"][1]
    assert got["early"][0] == "FAIL" and "clock" in got["early"][1]


@pytest.fixture(scope="module")
def fed(tmp_path_factory, tiny_model):
    return provision(tmp_path_factory.mktemp("fed"), 3, model_dir=tiny_model)


def _variant(fed, tmp_path: Path, **sections) -> Path:
    data = tomllib.loads(fed.server_toml.read_text())
    data["server"]["state_dir"] = str(tmp_path / "state")
    for sec, body in sections.items():
        data.setdefault(sec, {}).update(body)
    return write_toml(tmp_path / "server.toml", data)


def test_server_check_is_ready_for_a_provisioned_federation(fed, tmp_path, capsys):
    assert main(["server", "--config", str(_variant(fed, tmp_path)), "--check"]) == 0
    out = capsys.readouterr().out
    for name in ("config", "credentials", "server certificate", "federation CA certificate", "strategy", "base model",
                 "state_dir", "federation state", "deadlines"):
        assert f"ok    {name}:" in out, name
    assert "warn  address:" in out and "server: ready" in out  # port 0: any free port


def test_server_check_fails_on_an_expired_certificate_and_a_missing_model(fed, tmp_path, capsys):
    pki = tmp_path / "pki"
    for f in ("ca.pem", "ca.key"):
        (pki / f).parent.mkdir(parents=True, exist_ok=True)
        (pki / f).write_bytes((fed.pki / f).read_bytes())
    (pki / "ca.key").chmod(0o600)
    ca = tid.load_ca(pki)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    cert, key = ca.issue_server(["127.0.0.1"], not_before=past, not_after=past + dt.timedelta(days=1))
    (pki / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (pki / "server.key").chmod(0o600)
    path = _variant(fed, tmp_path, server={"credentials_dir": str(pki), "base_model_dir": str(tmp_path / "no-model")})
    assert main(["server", "--config", str(path), "--check"]) == 2
    out = capsys.readouterr().out
    assert "FAIL  server certificate:" in out and "expired on" in out
    assert "FAIL  base model:" in out and "no such directory" in out
    assert "ok    federation CA certificate:" in out
    assert out.strip().endswith("server: 2 check(s) failed; fix them before starting")


def test_server_check_of_an_unsafe_config_is_one_fail_line(fed, tmp_path, capsys):
    path = _variant(fed, tmp_path, federation={"mode": "plaintext"})
    assert main(["server", "--config", str(path), "--check"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL  config:") and "allow_plaintext_for_debugging" in out[0]
