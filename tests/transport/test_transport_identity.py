"""Federation PKI: file modes, identity binding, clear errors for operator mistakes."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from securefed import cli
from securefed.errors import ConfigError, CryptoError
from securefed.transport import identity


@pytest.fixture()
def fed(tmp_path: Path) -> identity.CredentialsDir:
    d = identity.init_ca(tmp_path / "creds")
    identity.issue_server(d.root, ["127.0.0.1", "localhost", "fed.example.org"])
    identity.issue_client(d.root, "alice")
    return d


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_private_keys_are_written_0600_and_certificates_0644(fed: identity.CredentialsDir) -> None:
    keys = [fed.ca_key, fed.server_key, fed.client_key("alice"), fed.client_identity_key("alice")]
    certs = [fed.ca_cert, fed.server_cert, fed.client_cert("alice")]
    assert all(_mode(k) == 0o600 for k in keys), {str(k): oct(_mode(k)) for k in keys}
    assert all(_mode(c) == 0o644 for c in certs)


def test_keys_are_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        d = identity.init_ca(tmp_path / "c")
        identity.issue_client(d.root, "bob")
    finally:
        os.umask(old)
    assert _mode(d.ca_key) == 0o600 and _mode(d.client_identity_key("bob")) == 0o600


def test_key_types_and_certificate_profile(fed: identity.CredentialsDir) -> None:
    ca = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(fed.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(fed.client_cert("alice").read_bytes())
    for cert in (ca, server, client):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert isinstance(cert.public_key().curve, ec.SECP256R1)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        leaf.verify_directly_issued_by(ca)
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "fed.example.org"]


def test_client_certificate_binds_identity_key_in_noncritical_extension(fed: identity.CredentialsDir) -> None:
    creds = identity.load_client_credentials(fed.root, "alice")
    cert = x509.load_pem_x509_certificate(creds.certificate_pem)
    ext = cert.extensions.get_extension_for_oid(identity.IDENTITY_KEY_OID)
    assert ext.critical is False  # TLS stacks must not reject the certificate for it
    assert identity.client_id_from_certificate(cert) == "alice"
    bound = identity.identity_key_from_certificate(cert)
    assert identity.raw_public_key(bound) == identity.raw_public_key(creds.identity_public_key)
    # The bound key verifies what the identity private key signs.
    bound.verify(creds.identity_key.sign(b"round keys"), b"round keys")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["securefed://client/alice"]


def test_server_certificate_is_not_a_client_identity(fed: identity.CredentialsDir) -> None:
    server = x509.load_pem_x509_certificate(fed.server_cert.read_bytes())
    with pytest.raises(CryptoError):
        identity.client_id_from_certificate(server)
    with pytest.raises(CryptoError):
        identity.identity_key_from_certificate(server)


def test_identity_key_swap_is_detected_on_load(fed: identity.CredentialsDir, tmp_path: Path) -> None:
    identity.issue_client(fed.root, "bob")
    os.replace(fed.client_identity_key("bob"), fed.client_identity_key("alice"))
    with pytest.raises(ConfigError, match="does not match the identity key bound"):
        identity.load_client_credentials(fed.root, "alice")


def test_tls_key_swap_is_detected_on_load(fed: identity.CredentialsDir) -> None:
    identity.issue_client(fed.root, "bob")
    os.replace(fed.client_key("bob"), fed.client_key("alice"))
    with pytest.raises(ConfigError, match="does not match"):
        identity.load_client_credentials(fed.root, "alice")


def test_group_readable_private_key_is_refused(fed: identity.CredentialsDir) -> None:
    os.chmod(fed.client_key("alice"), 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        identity.load_client_credentials(fed.root, "alice")


@pytest.mark.parametrize("name", ["", "Alice", "a/b", "../x", "-x", "a.b", "a b", "x" * 64, "ümlaut"])
def test_invalid_client_names_are_refused(fed: identity.CredentialsDir, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid client name"):
        identity.issue_client(fed.root, name)


def test_existing_credentials_are_not_overwritten_without_force(fed: identity.CredentialsDir) -> None:
    before = fed.client_cert("alice").read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        identity.issue_client(fed.root, "alice")
    with pytest.raises(ConfigError, match="--force"):
        identity.init_ca(fed.root)
    assert fed.client_cert("alice").read_bytes() == before
    identity.issue_client(fed.root, "alice", force=True)
    assert fed.client_cert("alice").read_bytes() != before
    assert _mode(fed.client_key("alice")) == 0o600


def test_expired_certificate_can_be_issued_for_tests(fed: identity.CredentialsDir) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    identity.issue_client(fed.root, "old", not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(days=1))
    cert = x509.load_pem_x509_certificate(fed.client_cert("old").read_bytes())
    assert cert.not_valid_after_utc < now
    with pytest.raises(ConfigError, match="ends before it starts"):
        identity.issue_client(fed.root, "bad", not_before=now, not_after=now - dt.timedelta(seconds=1))


def test_cli_keys_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "k"
    assert cli.main(["keys", "issue-client", "carol", "--dir", str(d)]) == 2
    assert "no federation CA" in capsys.readouterr().err
    assert cli.main(["keys", "init-ca", "--dir", str(d)]) == 0
    assert cli.main(["keys", "issue-server", "--dir", str(d), "--host", "10.0.0.5"]) == 0
    assert cli.main(["keys", "issue-client", "carol", "--dir", str(d)]) == 0
    assert cli.main(["keys", "issue-client", "Carol!", "--dir", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("securefed: error: invalid client name") and "Traceback" not in err
    assert cli.main(["keys", "issue-server", "--dir", str(d), "--host", "bad host!", "--force"]) == 2
    assert "invalid --host" in capsys.readouterr().err
    creds = identity.load_client_credentials(d, "carol")
    assert creds.name == "carol" and isinstance(creds.identity_key, ed25519.Ed25519PrivateKey)
    server = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    ips = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert ips == [ipaddress.ip_address("10.0.0.5")]
    assert _mode(d / "clients" / "carol.identity.key") == 0o600


def test_missing_ca_pem_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="init-ca"):
        identity.load_client_credentials(tmp_path, "alice")
