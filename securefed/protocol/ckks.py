"""The CKKS mode's messages, as member and coordinator both read them.

A CKKS attempt runs three stages of its own (``CkksStage``), carried by existing wire messages:

* ``CONTRIBUTE``: each member uploads its ciphertext chunks followed by a ``Contribution`` signature
  (a ``TRANSFER_KIND_CIPHERTEXTS`` transfer, header stage ``STAGE_CIPHERTEXT_UPLOAD``) while the plan
  stage is open;
* ``CONFIRM``: the server offers every contributor the decryption request (all signed contributions,
  ``encode_contributions``) as an ``AGGREGATE_KIND_CKKS_CIPHERTEXT_SUM`` download; a member that
  accepts it signs ``confirmation_payload`` (``SubmitResult.consistency_signature``, header stage
  ``STAGE_CONSISTENCY_CHECK``);
* ``DECRYPT``: the server hands back the confirmations (``Task.decrypt_request``); a member decrypts
  and returns the sum as fixed point (``encode_decrypted``; a ``TRANSFER_KIND_RING_VECTOR`` transfer,
  header stage ``STAGE_AGGREGATE``).

Everything a member signs here is domain-separated and binds the plan digest and the attempt.
"""

from __future__ import annotations

import enum
import hashlib
import json
from typing import NamedTuple

import numpy as np

from securefed.errors import InvalidMessage
from securefed.transport._generated import federation_pb2 as pb


class CkksStage(enum.Enum):
    CONTRIBUTE = "contribute"
    CONFIRM = "confirm"
    DECRYPT = "decrypt"

    @property
    def wire_stage(self) -> int:
        """The ``RequestHeader.stage`` a member's message of this stage carries."""
        return _WIRE_STAGE[self]


_WIRE_STAGE = {CkksStage.CONTRIBUTE: pb.STAGE_CIPHERTEXT_UPLOAD, CkksStage.CONFIRM: pb.STAGE_CONSISTENCY_CHECK,
               CkksStage.DECRYPT: pb.STAGE_AGGREGATE}

CONTRIBUTION_DOMAIN = b"securefed/ckks-contribution/v1\x00"
MANIFEST_FORMAT = "securefed-ckks-contributions/v1"
CONFIRMATION_DOMAIN = b"securefed/ckks-confirm/v1\x00"
SIGNATURE_BYTES = 64

# The decrypted sum travels back as fixed point in Z_2^64 with this many fractional bits: exact to
# 2^-40, far below the CKKS decryption noise, and a sum up to 2^23 in magnitude fits.
DECRYPTED_FRAC_BITS = 40


class Contribution(NamedTuple):
    """One member's signed ciphertexts, as listed in a decryption request."""

    client: str
    signature: bytes
    chunks: list[bytes]

    @property
    def digest(self) -> bytes:
        return contribution_digest(self.chunks)


def digest_parts(parts: list[bytes]) -> bytes:
    """SHA-256 over length-prefixed parts (so no two splits of the same bytes collide)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.digest()


def contribution_digest(chunks: list[bytes]) -> bytes:
    return digest_parts(chunks)


def contribution_payload(plan_sha256: bytes, attempt: int, client: str, chunks_digest: bytes) -> bytes:
    """What a member signs for its CKKS upload: this plan, this attempt, this member, these ciphertexts."""
    name = client.encode("utf-8")
    return (CONTRIBUTION_DOMAIN + bytes(plan_sha256) + attempt.to_bytes(8, "big") + len(name).to_bytes(2, "big")
            + name + chunks_digest)


def confirmation_payload(plan_sha256: bytes, attempt: int, request_digest: bytes) -> bytes:
    """What a member signs to confirm the one decryption request (contributor set) it accepted."""
    return CONFIRMATION_DOMAIN + bytes(plan_sha256) + attempt.to_bytes(8, "big") + bytes(request_digest)


def split_upload(parts: list[bytes]) -> tuple[list[bytes], bytes]:
    """A CKKS upload is its ciphertext chunks followed by the 64-byte contribution signature."""
    if len(parts) < 2 or len(parts[-1]) != SIGNATURE_BYTES:
        raise InvalidMessage("a CKKS upload is its ciphertexts followed by the 64-byte contribution signature")
    return list(parts[:-1]), bytes(parts[-1])


def encode_contributions(items: list[Contribution] | list[tuple[str, bytes, list[bytes]]]) -> list[bytes]:
    """Parts of the decryption request: a JSON manifest, then every contribution's ciphertext chunks."""
    manifest = {"format": MANIFEST_FORMAT,
                "contributors": [{"client": c, "chunks": len(ch), "signature": sig.hex()} for c, sig, ch in items]}
    parts = [json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")]
    for _, _, ch in items:
        parts.extend(ch)
    return parts


def decode_contributions(parts: list[bytes]) -> list[Contribution]:
    try:
        manifest = json.loads(parts[0])
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError("format")
        entries = manifest["contributors"]
        out, i = [], 1
        for e in entries:
            k = int(e["chunks"])
            if k < 1 or i + k > len(parts):
                raise ValueError("chunk count")
            out.append(Contribution(str(e["client"]), bytes.fromhex(e["signature"]), list(parts[i : i + k])))
            i += k
        if i != len(parts):
            raise ValueError("trailing parts")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError, OverflowError):
        raise InvalidMessage("malformed CKKS decryption request") from None
    return out


def encode_decrypted(values: np.ndarray) -> bytes:
    v = np.rint(np.asarray(values, dtype=np.float64) * 2.0**DECRYPTED_FRAC_BITS)
    if not np.all(np.isfinite(v)) or np.max(np.abs(v), initial=0) >= 2.0**62:
        raise InvalidMessage("decrypted aggregate out of range")
    return v.astype("<i8").tobytes()


def decode_decrypted(data: bytes, length: int) -> np.ndarray:
    if len(data) != 8 * length:
        raise InvalidMessage(f"decrypted aggregate is {len(data)} bytes, expected {8 * length}")
    return np.frombuffer(data, dtype="<i8").astype(np.float64) / 2.0**DECRYPTED_FRAC_BITS
