"""Start-up checks the server's certificate first (issue 18): an expired one is one line and exit 2 at
once, before the base model is fingerprinted or the round-0 adapter built (minutes for a large model),
and ``securefed status`` says the start failed instead of "starting"."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from test_server_preflight import _variant, fed  # noqa: F401  (the module fixture)

import securefed.server.app as server_app
from securefed.cli import main
from securefed.server.livestatus import read_live
from securefed.transport import identity as tid


def _expired_pki(fed, tmp_path):  # noqa: F811
    pki = tmp_path / "pki"
    pki.mkdir()
    for f in ("ca.pem", "ca.key"):
        (pki / f).write_bytes((fed.pki / f).read_bytes())
    (pki / "ca.key").chmod(0o600)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    cert, key = tid.load_ca(pki).issue_server(["127.0.0.1"], not_before=past, not_after=past + dt.timedelta(days=1))
    (pki / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (pki / "server.key").chmod(0o600)
    return pki


def test_an_expired_certificate_stops_the_server_before_it_reads_the_model(fed, tmp_path, monkeypatch, capsys):  # noqa: F811
    def read_the_model(config):
        raise AssertionError("fingerprinted the base model before checking the certificate")

    monkeypatch.setattr(server_app, "server_fingerprint", read_the_model)
    path = _variant(fed, tmp_path, server={"credentials_dir": str(_expired_pki(fed, tmp_path))})
    assert main(["server", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expired" in err[0] and err[0].startswith("securefed: error:")
    live = read_live(tmp_path / "state")
    assert live["server"]["running"] is False and live["status"]["detail"] == "failed to start"


def test_control_a_valid_certificate_goes_on_to_read_the_model(fed, tmp_path, monkeypatch):  # noqa: F811
    class Read(Exception):
        pass

    def read_the_model(config):
        raise Read()

    monkeypatch.setattr(server_app, "server_fingerprint", read_the_model)
    with pytest.raises(Read):
        main(["server", "--config", str(_variant(fed, tmp_path))])
