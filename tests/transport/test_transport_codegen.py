"""The checked-in stubs match the .proto files, and import as part of securefed only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from securefed.transport import codegen


@pytest.mark.timeout(60)
def test_checked_in_stubs_are_up_to_date() -> None:
    stale = codegen.stale_files()
    assert stale == [], f"stale stubs {stale}: run python -m securefed.transport.codegen"


def test_stale_check_detects_an_edit(tmp_path: Path) -> None:
    for f in codegen.GENERATED_DIR.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    target = tmp_path / "federation_pb2.py"
    target.write_text(target.read_text() + "\n# edited\n")
    assert codegen.stale_files(tmp_path) == ["federation_pb2.py"]


def test_generated_imports_are_package_relative() -> None:
    for f in codegen.GENERATED_DIR.glob("*.py"):
        text = f.read_text()
        assert not re.search(r"^(from|import) securefed\.v1\b", text, re.MULTILINE), f.name
    from securefed.transport._generated import federation_pb2

    # Registered under its versioned proto path, so it cannot clash with another federation.proto.
    assert federation_pb2.DESCRIPTOR.name == "securefed/v1/federation.proto"
    assert federation_pb2.DESCRIPTOR.package == "securefed.v1"


def test_service_surface() -> None:
    from securefed.transport.messages import pb

    methods = {m.name: (m.client_streaming, m.server_streaming) for m in pb.DESCRIPTOR.services_by_name["Federation"].methods}
    assert methods == {
        "Register": (False, False),
        "PollTask": (False, False),
        "SubmitResult": (False, False),
        "UploadMasked": (True, False),
        "UploadCiphertext": (True, False),
        "DownloadAggregate": (False, True),
        "ReportPrivacyEvent": (False, False),
        "GetStatus": (False, False),
        "OpenTransfer": (False, False),
        "SendTransfer": (True, False),
        "SendHeartbeat": (False, False),
        "ReportSecurityAlert": (False, False),
    }
    # Every request names round/session/stage through a header (replay rejection), except the chunks of
    # an upload: they name the transfer an OpenTransfer (header, sequence) declared, and the id binds
    # the member, attempt, stage, sizes and digest, so a replayed chunk only repeats bytes already held.
    for m in pb.DESCRIPTOR.services_by_name["Federation"].methods:
        if m.input_type.name == "TransferChunk":
            assert set(m.input_type.fields_by_name) == {"transfer_id", "offset", "data"}
            continue
        assert "header" in m.input_type.fields_by_name, m.input_type.name
